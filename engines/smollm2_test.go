package engines

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

var (
	smolOnce sync.Once
	smolDir  string
	smolErr  error
)

// smolLM2 converts the SmolLM2-135M-Instruct GGUF file that `just setup` installs, once per test
// binary, through the same resolver `hippo run --model smollm2-135m` uses. A missing file fails
// the test: CI must run on the real weights.
func smolLM2(t *testing.T) string {
	t.Helper()
	root := testenv.Root(t)
	m, _ := synth.LookupReal("smollm2-135m")
	tokDir := filepath.Join(root, ".cache", "tokenizers")
	if _, err := os.Stat(synth.RealFile(m, tokDir)); err != nil {
		t.Fatalf("SmolLM2 GGUF missing (%v): run `just setup`", err)
	}
	smolOnce.Do(func() {
		var tmp string
		if tmp, smolErr = os.MkdirTemp("", "hippo-smollm2-"); smolErr != nil {
			return
		}
		smolDir, smolErr = synth.Resolve(context.Background(), "smollm2-135m", tmp, tokDir)
	})
	if smolErr != nil {
		t.Fatal(smolErr)
	}
	return smolDir
}

// smolPrompts are the chat prompts of the greedy fidelity test: varied topics, lengths and scripts.
var smolPrompts = []string{
	"Explain pipeline parallelism in one sentence.",
	"Write a haiku about the sea.",
	"What is the capital of France, and why is it famous?",
	"List three prime numbers greater than 100.",
	"Translate 'good morning, my friend' into Spanish and German.",
	"def fib(n):\n    # complete this Python function",
	"Why is the sky blue? Answer for a ten-year-old.",
	"Give me a recipe for pancakes with exact quantities: 2 eggs, 250 ml milk...",
}

// perplexityText is the fixed text whose log-probabilities are compared and whose perplexity is
// reported.
const perplexityText = "The Apache License is a permissive free software license written by the Apache " +
	"Software Foundation. It allows users to use the software for any purpose, to distribute it, to " +
	"modify it, and to distribute modified versions of the software under the terms of the license, " +
	"without concern for royalties. The foundation and its projects release their software products " +
	"under the Apache License. The license is also used by many non-ASF projects."

// longText is a prompt of more than 2,048 tokens, so prefill runs in two chunks on both sides.
func longText() string {
	var b strings.Builder
	for i := 0; b.Len() < 12000; i++ {
		fmt.Fprintf(&b, "Section %d. In a pipeline of %d stages, stage %d sends its activations of %d bytes to stage %d; ",
			i, i%7+2, i%5, 1024*(i%9+1), i%5+1)
		b.WriteString("the driver samples a token and feeds it back, and the next step begins. ")
	}
	return b.String()
}

// TestSmolLM2MatchesMLXLM is invariant 1 on real weights: on the checkpoint converted from
// SmolLM2's GGUF file, greedy decoding equals mlx-lm's token for token in f32 and bf16 (eight
// chat prompts x 64 tokens, and a prompt of over 2,048 tokens), and the log-probabilities of a
// fixed text agree within 1e-4 in f32.
func TestSmolLM2MatchesMLXLM(t *testing.T) {
	const n = 64
	dir := smolLM2(t)
	for _, dtype := range []string{"f32", "bf16"} {
		t.Run(dtype, func(t *testing.T) {
			e, err := Open(context.Background(), Options{Model: dir, DType: dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			type job struct {
				name   string
				ids    []int
				max    int
				tokens []int
			}
			var jobs []job
			for i, p := range smolPrompts {
				ids, err := e.Prompt(p, true)
				if err != nil {
					t.Fatal(err)
				}
				jobs = append(jobs, job{name: fmt.Sprintf("prompt %d", i), ids: ids, max: n})
			}
			long, err := e.Prompt(longText(), true)
			if err != nil {
				t.Fatal(err)
			}
			if len(long) <= PrefillChunk {
				t.Fatalf("long prompt has %d tokens; want more than %d", len(long), PrefillChunk)
			}
			jobs = append(jobs, job{name: fmt.Sprintf("long prompt (%d tokens)", len(long)), ids: long, max: 16})
			var gen []map[string]any
			for i := range jobs {
				st, err := e.Generate(context.Background(), Request{Tokens: jobs[i].ids, MaxTokens: jobs[i].max, IgnoreEOS: true}, func(Token) error { return nil })
				if err != nil {
					t.Fatal(err)
				}
				jobs[i].tokens = st.Tokens
				gen = append(gen, map[string]any{"prompt_ids": jobs[i].ids, "max_tokens": jobs[i].max})
			}
			req := map[string]any{"model": dir, "dtype": dtype, "generate": gen}
			var text []int
			var ours []float64
			if dtype == "f32" {
				text = e.Tokenizer().Encode(perplexityText, true)
				if ours, err = e.LogProbs(context.Background(), text); err != nil {
					t.Fatal(err)
				}
				req["logprobs"] = text
			}
			var peer struct {
				Tokens   [][]int
				Logprobs []float64
			}
			testenv.PythonJSON(t, "engines/testdata/mlx_lm_smollm2.py", req, &peer)
			if len(peer.Tokens) != len(jobs) {
				t.Fatalf("mlx-lm answered %d prompts; want %d", len(peer.Tokens), len(jobs))
			}
			for i, j := range jobs {
				want := peer.Tokens[i]
				if len(j.tokens) != j.max || len(want) != j.max {
					t.Errorf("%s: generated %d tokens, mlx-lm %d; want %d each", j.name, len(j.tokens), len(want), j.max)
					continue
				}
				for k := range j.tokens {
					if j.tokens[k] != want[k] {
						t.Errorf("%s: token %d = %d; mlx-lm %d\nours   %v\nmlx-lm %v", j.name, k, j.tokens[k], want[k], j.tokens, want)
						break
					}
				}
			}
			if dtype != "f32" {
				return
			}
			if len(peer.Logprobs) != len(ours) {
				t.Fatalf("mlx-lm gave %d log-probabilities; want %d", len(peer.Logprobs), len(ours))
			}
			var worst, sum float64
			for i := range ours {
				worst = max(worst, math.Abs(ours[i]-peer.Logprobs[i]))
				sum += ours[i]
			}
			ppl := math.Exp(-sum / float64(len(ours)))
			t.Logf("fixed text: %d tokens, perplexity %.3f (mlx-lm %.3f), largest log-probability difference %.2g",
				len(text), ppl, perplexity(peer.Logprobs), worst)
			if worst > 1e-4 {
				t.Errorf("log-probabilities differ from mlx-lm's by up to %g; want at most 1e-4", worst)
			}
			if ppl > 50 {
				t.Errorf("perplexity %.1f on plain English: the weights are not loaded right", ppl)
			}
		})
	}
}

func perplexity(lp []float64) float64 {
	var s float64
	for _, v := range lp {
		s += v
	}
	return math.Exp(-s / float64(len(lp)))
}
