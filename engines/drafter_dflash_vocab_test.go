package engines

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// withHeadVocab returns a copy of the DFlash draft directory draft (its files linked) with a head
// vocabulary file holding content.
func withHeadVocab(t *testing.T, draft string, content any) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(draft)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if err := os.Symlink(filepath.Join(draft, en.Name()), filepath.Join(dir, en.Name())); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(content)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, model.VocabMapFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// headVocab is the content of a head vocabulary file.
type headVocab struct {
	TargetVocabSize int   `json:"target_vocab_size"`
	IDs             []int `json:"ids"`
}

// randomSubset draws n distinct ids of [0, vocab), sorted.
func randomSubset(seed uint64, vocab, n int) []int {
	ids := rand.New(rand.NewPCG(seed, 1)).Perm(vocab)[:n]
	slices.Sort(ids)
	return ids
}

// primeDFlash records the target's hidden states of history's context from scratch, as
// GenerateSpec's prefill does, and empties d's caches, so that d can draft for history.
func primeDFlash(t *testing.T, e *Engine, d *DFlashDrafter, history []int) {
	t.Helper()
	ctx := context.Background()
	err := e.worker.Do(ctx, func() error {
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		e.setTaps(d.m.TargetLayers())
		_, _, _, err := e.scoreAll(history[:len(history)-1], false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reset(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDFlashHeadVocab checks a DFlash drafter whose directory has a head vocabulary against the
// same draft scoring the whole vocabulary, for an untied and a tied head in both weight layouts:
// greedy drafts are the argmax of the full logits over the subset; sampled drafts (on the device,
// through Draft, and truncated for a pipeline by DraftTop) come from distributions over the whole
// vocabulary that are exactly 0 outside the subset and, inside it, the softmax at the
// temperature of the full logits masked to the subset.
func TestDFlashHeadVocab(t *testing.T) {
	const k, temp, topK = 4, 0.8, 8
	ctx := context.Background()
	untied, draftUntied := tinyDFlashPair(t)
	tied := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 11, Set: []string{"tie_word_embeddings=true"}})
	draftTied := synthesizeDFlash(t, synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3}, Target: tied})
	pairs := []struct{ name, target, draft string }{{"untied", untied, draftUntied}, {"tied", tied, draftTied}}
	for _, p := range pairs {
		for _, layout := range []string{"stored", "transposed"} {
			t.Run(p.name+"/"+layout, func(t *testing.T) {
				t.Setenv(model.LayoutEnv, layout)
				e, full := openDFlash(t, p.target, p.draft)
				vocab := e.Config().VocabSize
				subset := randomSubset(5, vocab, 3000)
				d, err := NewDFlashDrafter(ctx, e, withHeadVocab(t, p.draft, headVocab{vocab, subset}))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(d.Close)
				if got := d.HeadVocab(); got != len(subset) {
					t.Errorf("HeadVocab() = %d; want the file's %d ids", got, len(subset))
				}
				in := make(map[int]bool, len(subset))
				for _, id := range subset {
					in[id] = true
				}
				ids, err := e.Prompt(countingPrompt, false)
				if err != nil {
					t.Fatal(err)
				}
				history := append(slices.Clone(ids), 7)
				logits := scratchLogits(t, e, full, history, k) // [k, vocab]
				// The host's reference: argmax and softmax of each row masked to the subset.
				wantTok := make([]int, k)
				wantQ := make([][]float64, k)
				for i := range k {
					row := logits[i*vocab : (i+1)*vocab]
					best := subset[0]
					for _, id := range subset {
						if row[id] > row[best] {
							best = id
						}
					}
					wantTok[i] = best
					wantQ[i] = make([]float64, vocab)
					var sum float64
					for _, id := range subset {
						wantQ[i][id] = math.Exp(float64(row[id]-row[best]) / temp)
						sum += wantQ[i][id]
					}
					for _, id := range subset {
						wantQ[i][id] /= sum
					}
				}
				checkRows := func(name string, toks []int, rows [][]float32) {
					t.Helper()
					if len(toks) != k || len(rows) != k {
						t.Fatalf("%s: %d drafts with %d distributions; want %d of each", name, len(toks), len(rows), k)
					}
					for i, row := range rows {
						if !in[toks[i]] {
							t.Errorf("%s: draft %d is token %d, outside the head vocabulary", name, i, toks[i])
						}
						if len(row) != vocab {
							t.Fatalf("%s: distribution %d over %d tokens; want the target's %d", name, i, len(row), vocab)
						}
						var bad int
						var diff float64
						for id, x := range row {
							if !in[id] && x != 0 {
								bad++
							}
							diff = math.Max(diff, math.Abs(float64(x)-wantQ[i][id]))
						}
						if bad > 0 {
							t.Errorf("%s: distribution %d is not 0 at %d tokens outside the head vocabulary", name, i, bad)
						}
						if diff > 1e-5 {
							t.Errorf("%s: distribution %d differs from the host's masked softmax by %g", name, i, diff)
						}
					}
				}

				primeDFlash(t, e, d, history)
				got, _, err := d.Draft(ctx, history, k, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, wantTok) {
					t.Errorf("greedy drafts %v; want the subset argmax of the full logits %v", got, wantTok)
				}

				primeDFlash(t, e, d, history)
				toks, q, err := d.draftOnDevice(ctx, history, k, temp, rand.New(rand.NewPCG(7, 8)))
				if err != nil {
					t.Fatal(err)
				}
				var rows [][]float32
				err = e.worker.Do(ctx, func() error {
					defer q.Free()
					var err error
					rows, err = hostRows(q)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				checkRows("on the device", toks, rows)

				primeDFlash(t, e, d, history)
				toks, rows, err = d.Draft(ctx, history, k, temp, rand.New(rand.NewPCG(7, 8)))
				if err != nil {
					t.Fatal(err)
				}
				checkRows("Draft", toks, rows)

				primeDFlash(t, e, d, history)
				toks, top, err := d.DraftTop(ctx, history, k, topK, temp, rand.New(rand.NewPCG(7, 8)))
				if err != nil {
					t.Fatal(err)
				}
				for i, tps := range top {
					// The topK most likely tokens of the masked distribution, renormalised.
					order := slices.Clone(subset)
					slices.SortFunc(order, func(a, b int) int { return -cmpFloat(wantQ[i][a], wantQ[i][b]) })
					var mass float64
					for _, id := range order[:topK] {
						mass += wantQ[i][id]
					}
					if len(tps) != topK {
						t.Errorf("DraftTop: draft %d has %d candidates; want %d", i, len(tps), topK)
					}
					drawn := false
					for _, tp := range tps {
						if !slices.Contains(order[:topK], tp.ID) {
							t.Errorf("DraftTop: draft %d candidate %d is not among the subset's %d most likely %v", i, tp.ID, topK, order[:topK])
						}
						if want := wantQ[i][tp.ID] / mass; math.Abs(float64(tp.P)-want) > 1e-5 {
							t.Errorf("DraftTop: draft %d candidate %d has probability %g; want %g", i, tp.ID, tp.P, want)
						}
						drawn = drawn || tp.ID == toks[i]
					}
					if !drawn {
						t.Errorf("DraftTop: draft %d is token %d, not one of its candidates", i, toks[i])
					}
				}
			})
		}
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestDFlashHeadVocabMatchesStandalone is invariant 3 for a DFlash drafter with a head
// vocabulary: greedy speculative decoding gives the standalone tokens; and sampled speculative
// decoding, whose verifier takes the drafts' whole-vocabulary distributions, runs to the end.
func TestDFlashHeadVocabMatchesStandalone(t *testing.T) {
	const n = 24
	ctx := context.Background()
	target, draft := tinyDFlashPair(t)
	e, _ := openDFlash(t, target, draft)
	vocab := e.Config().VocabSize
	ids, req, want := standaloneGreedy(t, e, countingPrompt, false, n)
	// The subset holds the standalone tokens and a sample of the rest.
	subset := randomSubset(9, vocab, 2000)
	for _, id := range append(slices.Clone(ids), want.Tokens...) {
		if _, found := slices.BinarySearch(subset, id); !found {
			subset = append(subset, id)
			slices.Sort(subset)
		}
	}
	d, err := NewDFlashDrafter(ctx, e, withHeadVocab(t, draft, headVocab{vocab, subset}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	for _, k := range []int{2, 8} {
		_, ss := specMatches(t, e, req, d, k, want)
		t.Logf("k=%d: drafted %d, accepted %d, steps %d", k, ss.Drafted, ss.Accepted, len(ss.Steps))
	}
	sampled := req
	sampled.Temperature, sampled.Seed = 0.8, 4
	st, _, err := e.GenerateSpec(ctx, sampled, d, 4, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Tokens) != n {
		t.Errorf("sampled %d tokens; want %d", len(st.Tokens), n)
	}
}

// TestDFlashHeadVocabRefused checks that a bad head vocabulary file stops both drafter
// constructors with an error that names the file and says what to do, and that a stage's
// drafter takes a good one.
func TestDFlashHeadVocabRefused(t *testing.T) {
	ctx := context.Background()
	target, draft := tinyDFlashPair(t)
	e, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	st, err := OpenStage(ctx, StageOptions{Model: target, Range: model.Range{From: 0, To: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vocab := e.Config().VocabSize
	tests := []struct {
		name    string
		content headVocab
		want    string // part of the error; "" for a good file
	}{
		{"good", headVocab{vocab, []int{1, 5, 9}}, ""},
		{"out of range", headVocab{vocab, []int{1, vocab}}, "outside the target's vocabulary"},
		{"duplicate", headVocab{vocab, []int{3, 3}}, "listed twice"},
		{"another target", headVocab{49152, []int{1}}, "made for another target"},
		{"empty", headVocab{vocab, nil}, "ids is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := withHeadVocab(t, draft, tt.content)
			de, err := NewDFlashDrafter(ctx, e, dir)
			if err == nil {
				defer de.Close()
			}
			ds, serr := NewStageDFlashDrafter(ctx, st, dir)
			if serr == nil {
				defer ds.Close()
			}
			for name, err := range map[string]error{"NewDFlashDrafter": err, "NewStageDFlashDrafter": serr} {
				if tt.want == "" {
					if err != nil {
						t.Errorf("%s: %v; want a drafter", name, err)
					}
					continue
				}
				if err == nil {
					t.Errorf("%s accepted the file; want an error containing %q", name, tt.want)
					continue
				}
				for _, part := range []string{tt.want, filepath.Join(dir, model.VocabMapFile), "remove it"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("%s: error %q does not contain %q", name, err, part)
					}
				}
			}
			if tt.want == "" && serr == nil && err == nil {
				if de.HeadVocab() != 3 || ds.HeadVocab() != 3 {
					t.Errorf("HeadVocab() = %d (engine), %d (stage); want 3", de.HeadVocab(), ds.HeadVocab())
				}
			}
		})
	}
}
