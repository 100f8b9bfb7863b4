package engines

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hippo-bench/hippo/engines/model"
)

// trainedARDraft is the 2-layer autoregressive draft `just train-ardraft` distils for
// SmolLM2-135M-Instruct, with a restricted vocabulary (draft_vocab.json), shipped as test data.
const trainedARDraft = "spec/testdata/ardraft-smollm2"

// TestTrainedModelDrafterMatchesStandalone is invariant 3 on the real model with the distilled
// draft and its restricted vocabulary: SmolLM2-135M-Instruct decodes a held-out chat prompt
// greedily, standalone and with the model drafter at K = 2 and 4; the tokens must be identical.
// Sampled, the drafter must propose only tokens of its subset, from distributions over the
// target's whole vocabulary that are exactly zero outside the subset and sum to one (what keeps
// the rejection rule exact), and sampled speculative decoding must run to the end.
func TestTrainedModelDrafterMatchesStandalone(t *testing.T) {
	const n = 12
	ctx := context.Background()
	target := smolLM2(t)
	b, err := os.ReadFile(filepath.Join(trainedARDraft, "heldout.json"))
	if err != nil {
		t.Fatal(err)
	}
	var prompts []string
	if err := json.Unmarshal(b, &prompts); err != nil || len(prompts) == 0 {
		t.Fatalf("heldout.json: %v (%d prompts)", err, len(prompts))
	}
	dc, err := model.ReadConfig(trainedARDraft)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := model.ReadVocabMap(trainedARDraft, dc.VocabSize)
	if err != nil || vm == nil {
		t.Fatalf("the shipped draft's vocabulary map: %v (map %v)", err, vm)
	}
	e, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	de, err := Open(ctx, Options{Model: trainedARDraft, DType: "float32"})
	if err != nil {
		t.Fatal(err)
	}
	defer de.Close()
	if got, want := de.Config().VocabSize, e.Config().VocabSize; got != want {
		t.Fatalf("draft vocabulary %d; want the target's %d (through draft_vocab.json)", got, want)
	}
	d := NewModelDrafter(de)
	ids, err := e.Prompt(prompts[1], true)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}
	want, err := e.Generate(ctx, req, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{2, 4} {
		t.Run(fmt.Sprintf("greedy k%d", k), func(t *testing.T) {
			got, ss, err := e.GenerateSpec(ctx, req, d, k, func(Token) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got.Tokens) != fmt.Sprint(want.Tokens) {
				t.Fatalf("spec tokens = %v; standalone %v", got.Tokens, want.Tokens)
			}
			t.Logf("K=%d: %d steps, %d of %d drafts accepted, by position %v", k, len(ss.Steps), ss.Accepted, ss.Drafted, ss.ByPosition)
		})
	}
	t.Run("sampled", func(t *testing.T) {
		in := map[int]bool{}
		for _, id := range vm.IDs {
			if id >= 0 {
				in[id] = true
			}
		}
		if err := d.Reset(ctx); err != nil {
			t.Fatal(err)
		}
		toks, dists, err := d.Draft(ctx, append(ids, want.Tokens[:4]...), 3, 0.8, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatal(err)
		}
		if len(toks) != 3 || len(dists) != 3 {
			t.Fatalf("drafted %d tokens with %d distributions; want 3 and 3", len(toks), len(dists))
		}
		for i, p := range dists {
			if !in[toks[i]] {
				t.Errorf("draft %d is target id %d, outside the draft's vocabulary", i, toks[i])
			}
			if len(p) != e.Config().VocabSize {
				t.Fatalf("distribution %d has %d entries; want the target's %d", i, len(p), e.Config().VocabSize)
			}
			var sum float64
			for id, v := range p {
				if v != 0 && !in[id] {
					t.Fatalf("distribution %d gives target id %d (outside the subset) probability %g; want exactly 0", i, id, v)
				}
				sum += float64(v)
			}
			if math.Abs(sum-1) > 1e-3 {
				t.Errorf("distribution %d sums to %v; want 1", i, sum)
			}
		}
		sr := req
		sr.Temperature, sr.Seed, sr.MaxTokens = 0.8, 3, 6
		got, ss, err := e.GenerateSpec(ctx, sr, d, 2, func(Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Tokens) != sr.MaxTokens {
			t.Errorf("sampled spec made %d tokens; want %d", len(got.Tokens), sr.MaxTokens)
		}
		t.Logf("sampled K=2: %d of %d drafts accepted", ss.Accepted, ss.Drafted)
	})
}
