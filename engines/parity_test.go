package engines

import (
	"context"
	"fmt"
	"testing"

	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/internal/testmodel"
)

// TestGreedyMatchesMLXLM is invariant 1: greedy decoding of our engine equals mlx-lm's on the
// same checkpoint, compute dtype and prompt, token for token.
func TestGreedyMatchesMLXLM(t *testing.T) {
	const n = 64
	cases := []struct {
		preset, dtype string
		bits          int
	}{
		{"tiny-qwen3", "f32", 0},
		{"tiny-qwen3", "bf16", 0},
		{"tiny-qwen3", "f32", 4},
		{"tiny-llama", "f32", 0},
		{"tiny-llama", "bf16", 0},
		{"tiny-llama", "f32", 4},
		{"tiny-llama", "f32", 8},
	}
	prompt := "The harbour at dawn: gulls, diesel, 42 boats — and one 🐙 in a bucket."
	var runs []greedyRun
	for _, tc := range cases {
		dir := synthesize(t, synth.Options{Preset: tc.preset, Seed: 3, Bits: tc.bits})
		e, err := Open(context.Background(), Options{Model: dir, DType: tc.dtype})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := e.Prompt(prompt, false)
		if err != nil {
			t.Fatal(err)
		}
		st, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}, func(Token) error { return nil })
		e.Close()
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, greedyRun{name: fmt.Sprintf("%s/%s/bits%d", tc.preset, tc.dtype, tc.bits), tokens: st.Tokens,
			req: map[string]any{"op": "generate", "model": dir, "dtype": tc.dtype, "prompt_ids": ids, "max_tokens": n}})
	}
	compareGreedyWithMLXLM(t, runs, n)
}

// greedyRun is one of our greedy generations: the mlx-lm peer's generate request for the same
// model, dtype, prompt and length, and our tokens.
type greedyRun struct {
	name   string
	req    map[string]any
	tokens []int
}

// compareGreedyWithMLXLM runs every request through mlx-lm in one interpreter (importing mlx-lm
// dominates otherwise) and checks, in a subtest per run, that it generated our n tokens exactly
// and that they are not degenerate.
func compareGreedyWithMLXLM(t *testing.T, runs []greedyRun, n int) {
	t.Helper()
	reqs := make([]map[string]any, len(runs))
	for i, r := range runs {
		reqs[i] = r.req
	}
	var peer struct{ Results []struct{ Tokens []int } }
	testenv.PythonJSON(t, "bench/peers/mlx_lm_peer.py", map[string]any{"op": "batch", "requests": reqs}, &peer)
	if len(peer.Results) != len(runs) {
		t.Fatalf("mlx-lm answered %d requests; want %d", len(peer.Results), len(runs))
	}
	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			want := peer.Results[i].Tokens
			if len(r.tokens) != n || len(want) != n {
				t.Fatalf("generated %d tokens, mlx-lm %d; want %d each", len(r.tokens), len(want), n)
			}
			for k := range r.tokens {
				if r.tokens[k] != want[k] {
					t.Fatalf("token %d = %d; mlx-lm %d\nours   %v\nmlx-lm %v", k, r.tokens[k], want[k], r.tokens, want)
				}
			}
			if d := distinct(r.tokens); d < n/4 {
				t.Errorf("only %d distinct tokens in %d: the synthetic model is degenerate and this test proves little", d, n)
			}
		})
	}
}

func distinct(ids []int) int {
	m := map[int]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return len(m)
}

// synthesize writes a preset with its real tokenizer into a temporary directory.
func synthesize(t *testing.T, o synth.Options) string {
	t.Helper()
	return testmodel.Synthesize(t, o)
}
