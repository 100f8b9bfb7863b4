package engines

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestGemma3GreedyMatchesMLXLM is invariant 1 for Gemma 3: our greedy decode equals mlx-lm's on
// tiny Gemma 3 checkpoints whose sliding window (8) is far shorter than both the prompts and the
// 64 generated tokens, so that local layers' rotating caches wrap many times and prefill uses
// mlx-lm's explicit window masks. The long prompt spans two prefill chunks, so the second chunk
// meets a full rotating cache (temporal reordering, trimming to window-1 keys, an offset mask).
func TestGemma3GreedyMatchesMLXLM(t *testing.T) {
	const n, window = 64, 8
	cases := []struct {
		preset, dtype string
		bits          int
		long          bool
	}{
		{"tiny-gemma3", "f32", 0, false},
		{"tiny-gemma3", "bf16", 0, false},
		{"tiny-gemma3", "f32", 4, false},
		{"tiny-gemma3", "bf16", 4, false},
		{"tiny-gemma3", "f32", 0, true},
		// The multimodal layout: config under text_config, tensors under language_model., and
		// linear RoPE scaling on the global layer.
		{"tiny-gemma3-mm", "f32", 0, false},
	}
	prompt := "The harbour at dawn: gulls, diesel, 42 boats — and one 🐙 in a bucket. The tide turns; nets dry on the quay."
	var runs []greedyRun
	dirs := map[string]string{}
	for _, tc := range cases {
		name := fmt.Sprintf("%s/%s/bits%d", tc.preset, tc.dtype, tc.bits)
		if tc.long {
			name += "/long"
		}
		key := fmt.Sprintf("%s/%d", tc.preset, tc.bits)
		dir, ok := dirs[key]
		if !ok {
			dir = synthesize(t, synth.Options{Preset: tc.preset, Seed: 5, Bits: tc.bits, Set: []string{fmt.Sprintf("sliding_window=%d", window)}})
			dirs[key] = dir
		}
		e, err := Open(context.Background(), Options{Model: dir, DType: tc.dtype})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := e.Prompt(prompt, false)
		if err != nil {
			t.Fatal(err)
		}
		if tc.long {
			ids = longPrompt(ids, PrefillChunk+50)
		}
		if len(ids) <= 2*window {
			t.Fatalf("prompt has %d tokens; the test needs more than twice the window (%d)", len(ids), window)
		}
		st, err := e.Generate(context.Background(), Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}, func(Token) error { return nil })
		e.Close()
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, greedyRun{name: name, tokens: st.Tokens,
			req: map[string]any{"op": "generate", "model": dir, "dtype": tc.dtype, "prompt_ids": ids, "max_tokens": n}})
	}
	compareGreedyWithMLXLM(t, runs, n)
}

// longPrompt extends ids to n tokens with a fixed pseudo-random walk over ordinary token ids.
func longPrompt(ids []int, n int) []int {
	out := append([]int(nil), ids...)
	x := uint32(12345)
	for len(out) < n {
		x = x*1664525 + 1013904223
		out = append(out, 1000+int(x>>8)%20000)
	}
	return out
}

// TestGemma3LogprobsMatchMLXLMExactly is a stricter form of invariant 1 for Gemma 3: every step's
// log-probabilities are bit-identical to mlx-lm's (compared by SHA-256 of the float32 values).
// Greedy tokens survive small numeric differences (the bfloat16 rounding of the embedding scale,
// say); this test does not.
func TestGemma3LogprobsMatchMLXLMExactly(t *testing.T) {
	const steps = 24 // three times the window of 8
	cases := []struct {
		preset, dtype string
		bits          int
		long          bool
	}{
		{"tiny-gemma3-mm", "f32", 0, false},
		{"tiny-gemma3-mm", "bf16", 0, false},
		{"tiny-gemma3", "f32", 4, true},
	}
	type reply struct {
		Tokens []int
		SHA256 []string
		Top    [][][2]float64
	}
	var reqs []map[string]any
	var dirs []string
	var prompts [][]int
	for _, tc := range cases {
		dir := synthesize(t, synth.Options{Preset: tc.preset, Seed: 11, Bits: tc.bits})
		ids := longPrompt([]int{2}, 40)
		if tc.long {
			ids = longPrompt([]int{2}, PrefillChunk+30)
		}
		dirs, prompts = append(dirs, dir), append(prompts, ids)
		reqs = append(reqs, map[string]any{"model": dir, "dtype": tc.dtype, "prompt_ids": ids, "max_tokens": steps})
	}
	var want []reply
	testenv.PythonJSON(t, "engines/testdata/mlx_lm_logprobs.py", reqs, &want)
	if len(want) != len(cases) {
		t.Fatalf("mlx-lm answered %d requests; want %d", len(want), len(cases))
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s/bits%d/long=%v", tc.preset, tc.dtype, tc.bits, tc.long), func(t *testing.T) {
			w := want[i]
			if len(w.Tokens) != steps {
				t.Fatalf("mlx-lm generated %d tokens; want %d", len(w.Tokens), steps)
			}
			e, err := Open(context.Background(), Options{Model: dirs[i], DType: tc.dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			err = e.worker.Do(context.Background(), func() error {
				for _, c := range e.caches {
					c.Reset()
				}
				logits, err := e.prefill(prompts[i])
				for k := 0; err == nil && k < steps; k++ {
					var sum string
					var top []int
					sum, top, err = logprobDigest(logits)
					logits.Free()
					if err != nil {
						break
					}
					if sum != w.SHA256[k] {
						return fmt.Errorf("step %d: log-probabilities differ from mlx-lm's: our top ids %v, mlx-lm's %v", k, top, w.Top[k])
					}
					// Feed mlx-lm's token, so that one mismatch does not cascade.
					logits, err = e.forward([]int{w.Tokens[k]}, true)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// logprobDigest returns the SHA-256 of logits' log-probabilities as little-endian float32 (as
// mlx-lm's generate_step computes them) and the five most likely ids.
func logprobDigest(logits mlx.Array) (string, []int, error) {
	s := mlx.NewScope()
	defer s.Close()
	lp, err := mlx.AsType(mlx.Sub(logits, mlx.LogSumExp(logits, true)), mlx.Float32).Float32s()
	if err != nil {
		return "", nil, err
	}
	b := make([]byte, 4*len(lp))
	for i, v := range lp {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	ids := make([]int, len(lp))
	for i := range ids {
		ids[i] = i
	}
	sort.SliceStable(ids, func(a, b int) bool { return lp[ids[a]] > lp[ids[b]] })
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), ids[:5], nil
}
