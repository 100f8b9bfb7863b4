package engines

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/floats"
	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// countingPrompt repeats itself, so that prompt lookup finds drafts.
const countingPrompt = "one two three four, one two three four, one two three"

// standaloneGreedy encodes prompt (in the chat template with chat) and decodes n tokens greedily
// on e without stopping at EOS. It returns the prompt's ids, the request, and the standalone
// result that speculative decoding must reproduce.
func standaloneGreedy(t *testing.T, e *Engine, prompt string, chat bool, n int) ([]int, Request, Stats) {
	t.Helper()
	ids, err := e.Prompt(prompt, chat)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}
	want, err := e.Generate(context.Background(), req, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return ids, req, want
}

// specMatches decodes req speculatively on e with drafter d, k drafts a step, and fails t unless
// both the returned and the emitted tokens are want's; it returns the run's statistics.
func specMatches(t *testing.T, e *Engine, req Request, d Drafter, k int, want Stats) (Stats, SpecStats) {
	t.Helper()
	var emitted []int
	got, ss, err := e.GenerateSpec(context.Background(), req, d, k, func(tk Token) error {
		emitted = append(emitted, tk.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.Tokens) != fmt.Sprint(want.Tokens) || fmt.Sprint(emitted) != fmt.Sprint(want.Tokens) {
		t.Fatalf("speculative tokens = %v (emitted %v); standalone %v", got.Tokens, emitted, want.Tokens)
	}
	return got, ss
}

// TestSpeculativeMatchesStandalone is invariant 3 for greedy decoding: every drafter and K gives
// the standalone engine's tokens, token for token, with the caches trimmed after rejections.
func TestSpeculativeMatchesStandalone(t *testing.T) {
	const n = 48
	target := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 11})
	// A draft with other weights disagrees often: rejections and trims are exercised.
	other := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 12, Layers: 2})
	ctx := context.Background()
	e, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	de, err := Open(ctx, Options{Model: other})
	if err != nil {
		t.Fatal(err)
	}
	defer de.Close()
	self, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	_, req, want := standaloneGreedy(t, e, countingPrompt, false, n)
	drafters := map[string]Drafter{
		"lookup":      LookupDrafter{},
		"model-other": NewModelDrafter(de),
		"model-self":  NewModelDrafter(self), // the target drafting for itself: everything accepted
	}
	for name, d := range drafters {
		for _, k := range []int{1, 2, 4, 8} {
			t.Run(fmt.Sprintf("%s/k%d", name, k), func(t *testing.T) {
				got, ss := specMatches(t, e, req, d, k, want)
				if name == "model-self" && ss.Accepted != ss.Drafted {
					t.Errorf("self-drafting accepted %d of %d; want all", ss.Accepted, ss.Drafted)
				}
				t.Logf("drafted %d, accepted %d, steps %d", ss.Drafted, ss.Accepted, len(got.Steps))
			})
		}
	}
}

// TestRejectionSamplingKeepsTargetDistribution checks the device-side rejection rule
// (sampleVerify, what GenerateSpec runs at a temperature): whatever the drafter proposes, the
// first emitted token is distributed as the target's own. A chi-square test over seeded draws on
// a 5-token vocabulary (critical value 18.47 for 4 degrees of freedom at p = 0.001). The device
// cases propose as the device drafters do (drawRows: DFlash's block, the model drafter's steps):
// a block of two drafts drawn on the device at the temperature, whose proposal never leaves it;
// there the second token, when the first draft is kept, must follow the target's distribution too.
func TestRejectionSamplingKeepsTargetDistribution(t *testing.T) {
	const draws = 6000
	logp := func(p ...float64) []float32 {
		out := make([]float32, len(p))
		for i, v := range p {
			out[i] = float32(math.Log(v))
		}
		return out
	}
	target := logp(0.4, 0.25, 0.2, 0.1, 0.05)
	cases := []struct {
		name  string
		draft []float32 // the draft model's distribution; nil = a deterministic drafter
		fixed int       // the token a deterministic drafter proposes
		// device: a block of two drafts drawn on the device from draft at temp (drawRows).
		device bool
		temp   float64 // 0 means 1
		// head: a device draft whose head scores only these tokens (a dflash draft_vocab.json);
		// draft then lists their probabilities, in this order.
		head []int
	}{
		{name: "draft close to target", draft: []float32{0.35, 0.3, 0.2, 0.1, 0.05}},
		{name: "draft far from target", draft: []float32{0.05, 0.05, 0.1, 0.2, 0.6}},
		// A restricted-vocabulary draft (draft_vocab.json) gives the tokens outside its subset
		// probability 0: the residual must supply them.
		{name: "draft over a subset of the vocabulary", draft: []float32{0.5, 0.3, 0.2, 0, 0}},
		{name: "deterministic draft of a likely token", fixed: 0},
		{name: "deterministic draft of an unlikely token", fixed: 4},
		{name: "device block close to target", draft: []float32{0.35, 0.3, 0.2, 0.1, 0.05}, device: true, temp: 0.7},
		{name: "device block over a subset of the vocabulary", draft: []float32{0.5, 0.3, 0.2, 0, 0}, device: true, temp: 1.3},
		{name: "device block with a head vocabulary", draft: []float32{0.5, 0.3, 0.2}, head: []int{3, 0, 2}, device: true, temp: 0.9},
	}
	w := mlx.NewWorker()
	defer w.Close()
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			temp := tc.temp
			if temp == 0 {
				temp = 1
			}
			want := probs(target, temp)
			rng := rand.New(rand.NewPCG(1, 2))
			counts := make([]float64, len(target))
			seconds := make([]float64, len(target)) // the second token, after a kept first draft
			err := w.Do(context.Background(), func() error {
				key := mlx.RandomKey(uint64(ci))
				mlx.Detach(key)
				defer func() { key.Free() }()
				logits := mlx.FromFloat32s(slices.Concat(target, target, target), 3, len(target))
				mlx.Detach(logits)
				defer logits.Free()
				var draftLogits mlx.Array // the device drafter's block: two positions of draft
				var head *model.VocabSubset
				if tc.head != nil {
					var err error
					if head, err = model.NewVocabSubset(tc.head, len(target)); err != nil {
						return err
					}
					defer head.Free()
				}
				if tc.device {
					lq := logp(f64s(tc.draft)...)
					draftLogits = mlx.FromFloat32s(slices.Concat(lq, lq), 2, len(lq))
					mlx.Detach(draftLogits)
					defer draftLogits.Free()
				}
				for i := 0; i < draws; i++ {
					if tc.device {
						s := mlx.NewScope()
						next, sub := mlx.RandomSplit(key)
						mlx.Detach(next)
						key.Free()
						key = next
						dKey, vKey := mlx.RandomSplit(sub)
						tok, q := drawSubsetRows(draftLogits, temp, dKey, head)
						ids, err := tok.Int32s()
						var out []int
						if err == nil {
							out, err = sampleVerify(logits, []int{int(ids[0]), int(ids[1])}, q, temp, vKey)
						}
						if cerr := s.Close(); err == nil {
							err = cerr
						}
						if err != nil {
							return err
						}
						counts[out[0]]++
						if len(out) > 1 {
							seconds[out[1]]++
						}
						continue
					}
					d := tc.fixed
					var dists [][]float32
					if tc.draft != nil {
						w := make([]float64, len(tc.draft))
						var s float64
						for j, v := range tc.draft {
							w[j] = float64(v)
							s += w[j]
						}
						d = draw(w, s, rng)
						dists = [][]float32{tc.draft}
					}
					s := mlx.NewScope()
					next, sub := mlx.RandomSplit(key)
					mlx.Detach(next)
					key.Free()
					key = next
					var out []int
					q, err := proposal{dists: dists}.array(1, len(target))
					if err == nil {
						out, err = sampleVerify(mlx.Slice(logits, []int{0, 0}, []int{2, len(target)}), []int{d}, q, 1, sub)
					}
					if cerr := s.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						return err
					}
					counts[out[0]]++
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if chi := chiSquare(counts, want); chi > 18.47 {
				t.Errorf("first-token counts %v over %d draws; target %v: chi-square %.1f > 18.47", counts, draws, want, chi)
			}
			if !tc.device {
				return
			}
			// Most draws keep the first draft (the subset case about half); too few would make
			// the second test weak.
			if kept := floats.Sum(seconds); kept < draws/5 {
				t.Errorf("the first draft was kept in %v of %d draws; want at least %d", kept, draws, draws/5)
			}
			if chi := chiSquare(seconds, want); chi > 18.47 {
				t.Errorf("second-token counts %v after a kept first draft; target %v: chi-square %.1f > 18.47", seconds, want, chi)
			}
		})
	}
}

// chiSquare is Pearson's statistic of counts against the distribution want.
func chiSquare(counts []float64, want []float32) float64 {
	n := floats.Sum(counts)
	expected := f64s(want)
	floats.Scale(n, expected)
	return stat.ChiSquare(counts, expected)
}

// f64s widens float32s.
func f64s(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}
