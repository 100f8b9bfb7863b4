package engines

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
)

// TestDecodeSyncsPerToken holds the pipelined decode loop to its budget: standalone greedy
// decoding reads each token id once and never blocks on an evaluation; the prompt costs one
// blocking evaluation per prefill chunk before the last token.
func TestDecodeSyncsPerToken(t *testing.T) {
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 3})
	e, err := Open(context.Background(), Options{Model: dir, DType: "f32"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ids, err := e.Prompt("Count the boats in the harbour, slowly.", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		temperature float64
		topP        float64
	}{{"greedy", 0, 0}, {"sampled", 0.8, 0}, {"top-p", 0.8, 0.9}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 24
			before := mlx.SyncCount()
			st, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true, Temperature: tc.temperature, TopP: tc.topP, Seed: 5}, func(Token) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			got := mlx.SyncCount().Sub(before)
			want := mlx.Syncs{Evals: 1, Reads: n} // one prefill chunk, one read per token
			if len(st.Tokens) != n || got != want {
				t.Fatalf("%d tokens took %+v host synchronisations; want %d tokens with %+v", len(st.Tokens), got, n, want)
			}
			for i, s := range st.Steps {
				if s.Syncs != (mlx.Syncs{Reads: 1}) {
					t.Fatalf("step %d: %+v host synchronisations; want one read", i+1, s.Syncs)
				}
			}
		})
	}
}

// TestDecodeStopsAtEOS checks that the one-step lookahead does not leak past end-of-sequence:
// generation stops at the first EOS token with the tokens before it unchanged, and the caches
// (and what the engine records as fed, for speculative trims) hold exactly the prompt and the
// generated tokens, the EOS token included, because the lookahead step consumed it.
func TestDecodeStopsAtEOS(t *testing.T) {
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 3})
	open := func() *Engine {
		e, err := Open(context.Background(), Options{Model: dir, DType: "f32"})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open()
	ids, err := e.Prompt("The harbour at dawn", false)
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	free, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}, func(Token) error { return nil })
	e.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Pick a token that first appears mid-way and declare it the EOS.
	stop := -1
	for k := n / 3; k < n-2; k++ {
		if !slices.Contains(free.Tokens[:k], free.Tokens[k]) {
			stop = k
			break
		}
	}
	if stop < 0 {
		t.Fatalf("no token first appears between %d and %d in %v: the synthetic model is degenerate", n/3, n-2, free.Tokens)
	}
	eos := free.Tokens[stop]
	cfg := fmt.Sprintf(`{"eos_token_id": %d}`, eos)
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		maxTokens int
		want      []int
		finish    string
	}{
		{"eos", n, free.Tokens[:stop+1], "stop"},
		{"eos at the limit", stop + 1, free.Tokens[:stop+1], "stop"},
		{"limit before eos", stop, free.Tokens[:stop], "length"},
		{"one token", 1, free.Tokens[:1], "length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := open()
			defer e.Close()
			var emitted []int
			st, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: tc.maxTokens}, func(tk Token) error {
				emitted = append(emitted, tk.ID)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(st.Tokens, tc.want) || !slices.Equal(emitted, tc.want) || st.FinishReason != tc.finish {
				t.Fatalf("tokens %v (emitted %v), finish %q; want %v, %q", st.Tokens, emitted, st.FinishReason, tc.want, tc.finish)
			}
			// The lookahead runs only when another token is wanted: at the limit the last token is
			// never fed; before it (EOS) it is.
			fedGen := len(tc.want)
			if len(tc.want) == tc.maxTokens {
				fedGen--
			}
			wantFed := append(slices.Clone(ids), tc.want[:fedGen]...)
			var offset int
			e.worker.Do(context.Background(), func() error { offset = e.caches[0].Offset(); return nil })
			if !slices.Equal(e.fed, wantFed) || offset != len(wantFed) {
				t.Fatalf("caches hold %d positions, fed %v; want %d, %v", offset, e.fed, len(wantFed), wantFed)
			}
		})
	}
}

// TestModelDrafterOneReadPerDraft checks that greedy drafting reads its k tokens back at once,
// never blocking per token, and that they are the draft model's own greedy continuation.
func TestModelDrafterOneReadPerDraft(t *testing.T) {
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 3})
	e, err := Open(context.Background(), Options{Model: dir, DType: "f32"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ids, err := e.Prompt("The harbour at dawn", false)
	if err != nil {
		t.Fatal(err)
	}
	const k = 6
	want, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: 2 * k, IgnoreEOS: true}, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	d := NewModelDrafter(e)
	if err := d.Reset(context.Background()); err != nil {
		t.Fatal(err)
	}
	history := slices.Clone(ids)
	for round := range 2 { // the second round continues from the trimmed caches
		before := mlx.SyncCount()
		got, _, err := d.Draft(context.Background(), history, k, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		syncs := mlx.SyncCount().Sub(before)
		if wantTok := want.Tokens[round*k : (round+1)*k]; !slices.Equal(got, wantTok) || syncs != (mlx.Syncs{Reads: 1}) {
			t.Fatalf("round %d: drafted %v with %+v host synchronisations; want %v with one read", round, got, syncs, wantTok)
		}
		history = append(history, got...)
	}
}

// TestModelDrafterSampledOnDevice checks sampled drafting on the device: k drafts cost one
// evaluation and one read of their ids, the distributions stay on the device as [k, vocab], and
// each row is the draft model's own distribution at that position (softmax of the log-
// probabilities that scoring the drafted text step by step gives, at the temperature), so that
// the rejection rule compares the target with what each draft was really drawn from. Then
// self-drafting at a temperature, with the proposals handed from the draft's worker to the
// target's, keeps nearly every draft, and a seed repeats its tokens.
func TestModelDrafterSampledOnDevice(t *testing.T) {
	const k, temp = 4, 0.8
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 3})
	ctx := context.Background()
	open := func() *Engine {
		e, err := Open(ctx, Options{Model: dir, DType: "f32"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	}
	de := open()
	history, err := de.Prompt("The harbour at dawn", false)
	if err != nil {
		t.Fatal(err)
	}
	d := NewModelDrafter(de)
	if err := d.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	before := mlx.SyncCount()
	toks, q, err := d.draftOnDevice(ctx, history, k, temp, rand.New(rand.NewPCG(7, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if syncs := mlx.SyncCount().Sub(before); syncs != (mlx.Syncs{Evals: 1, Reads: 1}) {
		t.Errorf("sampled draft of %d made %+v host synchronisations; want one evaluation and one read", k, syncs)
	}
	v := de.Config().VocabSize
	var got []float32
	err = de.worker.Do(ctx, func() error {
		defer q.Free()
		if wantFed := append(slices.Clone(history), toks[:k-1]...); !slices.Equal(de.fed, wantFed) {
			return fmt.Errorf("draft caches fed %v; want %v", de.fed, wantFed)
		}
		if shape := q.Shape(); !slices.Equal(shape, []int{k, v}) {
			return fmt.Errorf("distributions of shape %v; want [%d %d]", shape, k, v)
		}
		var err error
		got, err = q.Float32s()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The reference: score the drafted text afresh on the host path and turn each position's
	// log-probabilities into probabilities at the temperature.
	var ref [][]float32
	err = de.worker.Do(ctx, func() error {
		for _, c := range de.caches {
			c.Reset()
		}
		de.fed = de.fed[:0]
		_, lps, _, err := de.scoreAll(append(slices.Clone(history), toks[:k-1]...), true)
		for j := range k {
			ref = append(ref, probs(lps[len(history)-1+j], temp))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for j := range k {
		row := got[j*v : (j+1)*v]
		var worst float64
		var sum float64
		for i := range row {
			worst = max(worst, math.Abs(float64(row[i]-ref[j][i])))
			sum += float64(row[i])
		}
		if worst > 1e-5 || math.Abs(sum-1) > 1e-3 || row[toks[j]] <= 0 {
			t.Errorf("draft %d (id %d, q %g): distribution sums to %v and differs from the scored one by up to %g; want 1 and 1e-5, with q > 0",
				j, toks[j], row[toks[j]], sum, worst)
		}
	}

	target, self := open(), open()
	ids, err := target.Prompt(countingPrompt, false)
	if err != nil {
		t.Fatal(err)
	}
	// A low temperature sharpens the random model's nearly flat distributions, so that a
	// proposal compared at the wrong position would be rejected often.
	req := Request{Tokens: ids, MaxTokens: 24, Temperature: 0.05, Seed: 9, IgnoreEOS: true}
	var runs [2][]int
	for i := range runs {
		st, ss, err := target.GenerateSpec(ctx, req, NewModelDrafter(self), k, func(Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Tokens) != req.MaxTokens || ss.Drafted == 0 || float64(ss.Accepted) < 0.9*float64(ss.Drafted) {
			t.Fatalf("self-drafting at temperature %v: %d tokens, %d of %d drafts kept; want %d tokens and at least 90%% kept",
				req.Temperature, len(st.Tokens), ss.Accepted, ss.Drafted, req.MaxTokens)
		}
		runs[i] = st.Tokens
		t.Logf("run %d: %d of %d drafts kept", i, ss.Accepted, ss.Drafted)
	}
	if !slices.Equal(runs[0], runs[1]) {
		t.Errorf("seed %d gave %v, then %v; want the same tokens", req.Seed, runs[0], runs[1])
	}
}
