package engines

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// shapeVocab is the vocabulary of the real-shape checkpoints. The shapes under test are the
// layers' (hidden size, heads, head_dim, FFN width); the vocabulary only sizes the embedding and
// the lm_head, and at 128-262k entries it would make this test several times slower.
const shapeVocab = 8192

// TestGreedyMatchesMLXLMAtRealShapes is invariant 1 (our greedy tokens equal mlx-lm's on the same
// checkpoint, compute dtype and prompt) at the layer shapes of released models, where the toy
// presets of TestGreedyMatchesMLXLM (hidden 64, head_dim 16) cannot reach: real head_dim and
// GQA ratios, the f16 compute dtype, 8-bit affine quantization at real widths, and prompts that
// span two prefill chunks.
//
// The reference runs with the same OpenBLAS as our engine (engines/testdata/mlx_lm_logprobs.py),
// so float32 matmuls round alike, and reports its top log-probabilities per step: a mismatch
// message shows how close mlx-lm's top two were.
//
// Each preset keeps its real layer shapes with 2 layers and an untied lm_head: with the tied
// head of the released configs, 2 random layers leave the input token's own embedding dominant
// (its dot product with itself grows with hidden size), and greedy decoding echoes it, 1-4
// distinct tokens in 32, which would prove little.
func TestGreedyMatchesMLXLMAtRealShapes(t *testing.T) {
	const n, short, long = 32, 24, PrefillChunk + 60
	untied := []string{"tie_word_embeddings=false", fmt.Sprintf("vocab_size=%d", shapeVocab)}
	checkpoints := map[string]synth.Options{
		// head_dim 128, 16 query / 8 KV heads, hidden 1024, FFN 3072, q/k norms over 128 dims.
		"qwen3-0.6b": {Preset: "qwen3-0.6b", Layers: 2, Set: untied},
		// The same, MLX affine 8-bit with group size 64 (mlx-lm convert's default).
		"qwen3-0.6b-8bit": {Preset: "qwen3-0.6b", Layers: 2, Bits: 8, Set: untied},
		// head_dim 64, 32 query / 8 KV heads, hidden 2048, FFN 8192, llama3 RoPE scaling.
		"llama-3.2-1b": {Preset: "llama-3.2-1b", Layers: 2, Set: untied},
		// head_dim 256, 4 query heads / 1 KV head, hidden 1152, FFN 6912, query_pre_attn_scalar
		// 256, local RoPE base 1e4 with its real window of 512 on layer 0 and the global base 1e6
		// on layer 1 (sliding_window_pattern 2 puts both kinds into 2 layers).
		"gemma-3-1b": {Preset: "gemma-3-1b", Layers: 2, Set: append([]string{"sliding_window_pattern=2"}, untied...)},
	}
	// Each case costs a synthesis, a load and a generation on both sides: the prompts over two
	// prefill chunks also carry the f32 real-shape checks of their architectures.
	cases := []struct {
		checkpoint, dtype string
		prompt            int
	}{
		// Two prefill chunks (2048 + 59 tokens, then the last alone), as mlx-lm's
		// prefill_step_size, then decoding past position 2108 (llama3-scaled RoPE there).
		{"qwen3-0.6b", "f32", long},
		{"llama-3.2-1b", "f32", long},
		{"qwen3-0.6b", "f16", short},
		{"qwen3-0.6b-8bit", "f32", short},
		// Past the 512-token window of layer 0: its rotating cache wraps during prefill and decode.
		{"gemma-3-1b", "f32", 600},
	}
	dirs := map[string]string{}
	type run struct {
		name        string
		ids, tokens []int
	}
	var runs []run
	var reqs []map[string]any
	for i, tc := range cases {
		start := time.Now()
		dir, ok := dirs[tc.checkpoint]
		if !ok {
			o := checkpoints[tc.checkpoint]
			o.Seed = 7
			dir = synthesize(t, o)
			dirs[tc.checkpoint] = dir
		}
		synthesized := time.Now()
		e, err := Open(context.Background(), Options{Model: dir, DType: tc.dtype})
		if err != nil {
			t.Fatal(err)
		}
		r := run{name: fmt.Sprintf("%s/%s/prompt%d", tc.checkpoint, tc.dtype, tc.prompt)}
		r.ids = randomPrompt(uint32(i+1), tc.prompt, shapeVocab)
		st, err := e.Generate(context.Background(), Request{Tokens: r.ids, MaxTokens: n, IgnoreEOS: true}, func(Token) error { return nil })
		e.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: synthesize %v, ours %v (prefill %v)", r.name, synthesized.Sub(start).Round(time.Millisecond), time.Since(synthesized).Round(time.Millisecond), st.Prefill.Round(time.Millisecond))
		r.tokens = st.Tokens
		runs = append(runs, r)
		reqs = append(reqs, map[string]any{"model": dir, "dtype": tc.dtype, "prompt_ids": r.ids, "max_tokens": n})
	}
	start := time.Now()
	var want []struct {
		Tokens []int
		Top    [][][2]float64
	}
	testenv.PythonJSON(t, "engines/testdata/mlx_lm_logprobs.py", reqs, &want)
	t.Logf("mlx-lm: %v", time.Since(start).Round(time.Millisecond))
	if len(want) != len(runs) {
		t.Fatalf("mlx-lm answered %d requests; want %d", len(want), len(runs))
	}
	for i, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			w := want[i]
			if len(r.tokens) != n || len(w.Tokens) != n {
				t.Fatalf("generated %d tokens, mlx-lm %d; want %d each", len(r.tokens), len(w.Tokens), n)
			}
			for k := range r.tokens {
				if r.tokens[k] != w.Tokens[k] {
					t.Fatalf("token %d = %d; mlx-lm %d (mlx-lm's top log-probabilities there: %v)\nours   %v\nmlx-lm %v", k, r.tokens[k], w.Tokens[k], w.Top[k], r.tokens, w.Tokens)
				}
			}
			if d := distinct(r.tokens); d < n/4 {
				t.Errorf("only %d distinct tokens in %d: the synthetic model is degenerate and this test proves little", d, n)
			}
			gap := math.Inf(1)
			for _, top := range w.Top {
				gap = min(gap, top[0][1]-top[1][1])
			}
			t.Logf("%d distinct tokens; smallest top-2 log-probability gap %.2g", distinct(r.tokens), gap)
		})
	}
}

// randomPrompt returns n pseudo-random token ids below vocab, fixed by seed.
func randomPrompt(seed uint32, n, vocab int) []int {
	ids := make([]int, n)
	x := seed
	for i := range ids {
		x = x*1664525 + 1013904223
		ids[i] = int(x>>8) % vocab
	}
	return ids
}
