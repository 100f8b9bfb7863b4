package engines

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

func synthesizeDFlash(t *testing.T, o synth.DFlashOptions) string {
	t.Helper()
	o.Out = t.TempDir()
	w := mlx.NewWorker()
	defer w.Close()
	if err := w.Do(context.Background(), func() error { _, err := synth.WriteDFlash(o); return err }); err != nil {
		t.Fatal(err)
	}
	return o.Out
}

// tinyDFlashPair writes a tiny-qwen3 target and a random DFlash draft for it (sharing its
// embedding and head).
func tinyDFlashPair(t *testing.T) (target, draft string) {
	t.Helper()
	target = synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 11})
	return target, synthesizeDFlash(t, synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3}, Target: target})
}

// openDFlash opens the target and the DFlash drafter draft on it; both close when t ends.
func openDFlash(t *testing.T, target, draft string) (*Engine, *DFlashDrafter) {
	t.Helper()
	ctx := context.Background()
	e, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	d, err := NewDFlashDrafter(ctx, e, draft)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return e, d
}

// maxAbsDiff is the largest |got[i] - want[i]| over want's indices.
func maxAbsDiff(got, want []float32) float64 {
	var diff float64
	for j := range want {
		diff = math.Max(diff, math.Abs(float64(got[j]-want[j])))
	}
	return diff
}

// recordingDFlash is a DFlashDrafter that keeps, for every draft, the history it drafted for and
// the logits it drafted from. With oracle set it runs the draft forward as usual but proposes the
// oracle's continuation instead, so that every draft is accepted.
type recordingDFlash struct {
	*DFlashDrafter
	oracle    []int // prompt + the standalone tokens
	histories [][]int
	drafted   [][]float32 // logits
}

func (r *recordingDFlash) Draft(ctx context.Context, history []int, k int, _ float64, _ *rand.Rand) ([]int, [][]float32, error) {
	n := min(k, r.BlockSize()-1)
	var out []int
	err := r.worker.Do(ctx, func() error {
		s := mlx.NewScope()
		defer s.Close()
		logits, err := r.logits(history, n, nil)
		if err != nil {
			return err
		}
		flat, err := logits.Float32s()
		if err != nil {
			return err
		}
		r.histories = append(r.histories, append([]int(nil), history...))
		r.drafted = append(r.drafted, flat)
		if r.oracle != nil {
			out = append(out, r.oracle[len(history):min(len(history)+n, len(r.oracle))]...)
			return nil
		}
		v := len(flat) / n
		for i := range n {
			best := 0
			for j, x := range flat[i*v : (i+1)*v] {
				if x > flat[i*v+best] {
					best = j
				}
			}
			out = append(out, best)
		}
		return nil
	})
	return out, nil, err
}

// TestDFlashMatchesStandalone is invariant 3 for the DFlash drafter: greedy speculative decoding
// gives the standalone tokens for every K. With random weights almost every draft is rejected, so
// trims and the re-recording of hidden states after rejections are exercised; an oracle run (the
// draft forward runs, the standalone tokens are proposed) has every draft accepted, so the context
// grows by whole blocks whose hidden states come from verify steps. In both, what the drafter
// computes from its incremental state (caches grown step by step, hidden states recorded in
// prefill chunks and verify steps) must equal a draft computed from scratch on the same history.
func TestDFlashMatchesStandalone(t *testing.T) {
	const n = 24
	target, draft := tinyDFlashPair(t)
	e, d := openDFlash(t, target, draft)
	ref, rd := openDFlash(t, target, draft)
	ids, req, want := standaloneGreedy(t, e, countingPrompt, false, n)
	cases := []struct {
		name    string
		k       int
		oracle  bool
		scratch bool // compare with drafts from scratch
	}{
		{"k1", 1, false, false},
		{"k2", 2, false, false},
		{"k4", 4, false, false},
		{"k8", 8, false, true},
		{"oracle/k8", 8, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingDFlash{DFlashDrafter: d}
			if tc.oracle {
				rec.oracle = append(append([]int(nil), ids...), want.Tokens...)
			}
			got, ss := specMatches(t, e, req, rec, tc.k, want)
			if cap := min(tc.k, d.BlockSize()-1); ss.Drafted > cap*len(ss.Steps) {
				t.Errorf("drafted %d tokens in %d steps; want at most %d a step", ss.Drafted, len(ss.Steps), cap)
			}
			if tc.oracle && ss.Accepted != ss.Drafted {
				t.Errorf("oracle drafts: accepted %d of %d; want all", ss.Accepted, ss.Drafted)
			}
			t.Logf("drafted %d, accepted %d, steps %d", ss.Drafted, ss.Accepted, len(got.Steps))
			if !tc.scratch {
				return
			}
			for i, h := range rec.histories {
				if i%2 != 0 && i != len(rec.histories)-1 {
					continue // a sample of the steps keeps the test quick
				}
				got := rec.drafted[i]
				want := scratchLogits(t, ref, rd, h, len(got)/e.Config().VocabSize)
				if diff := maxAbsDiff(got, want); diff > 1e-3 {
					t.Errorf("step %d (history of %d tokens): incremental draft logits differ from scratch by %g", i, len(h), diff)
				}
			}
		})
	}
	if e.taps != nil {
		t.Errorf("the target still records hidden states after GenerateSpec returned")
	}
}

// scratchLogits drafts n tokens for history with fresh state: the target scores history[:-1] in
// one forward, recording hidden states, and the drafter starts from empty caches.
func scratchLogits(t *testing.T, e *Engine, d *DFlashDrafter, history []int, n int) []float32 {
	t.Helper()
	var out []float32
	err := e.worker.Do(context.Background(), func() error {
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		e.setTaps(d.m.TargetLayers())
		defer e.setTaps(nil)
		if _, _, _, err := e.scoreAll(history[:len(history)-1], false); err != nil {
			return err
		}
		d.reset()
		var err error
		out, err = readLogits(d, history, n)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readLogits evaluates and reads d's logits for n drafts after history, on the calling MLX
// thread.
func readLogits(d *DFlashDrafter, history []int, n int) ([]float32, error) {
	s := mlx.NewScope()
	defer s.Close()
	logits, err := d.logits(history, n, nil)
	if err != nil {
		return nil, err
	}
	return logits.Float32s()
}

// TestDFlashSampling runs the drafter at a temperature: every draft comes with its distribution,
// and generation completes (that rejection sampling keeps the target's distribution is
// TestRejectionSamplingKeepsTargetDistribution's job).
func TestDFlashSampling(t *testing.T) {
	target := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 11})
	draft := synthesizeDFlash(t, synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3}})
	ctx := context.Background()
	e, d := openDFlash(t, target, draft)
	ids, err := e.Prompt("count: one two three", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	// Outside GenerateSpec the target records nothing: a clear error, not a crash.
	if _, _, err := d.Draft(ctx, append(ids, 1), 4, 0, nil); err == nil {
		t.Errorf("Draft outside GenerateSpec succeeded; want an error")
	}
	var dists int
	probe := &probeDrafter{FeatureDrafter: d, check: func(tokens []int, ds [][]float32) {
		if len(ds) != len(tokens) {
			t.Errorf("drafted %d tokens with %d distributions; want one each", len(tokens), len(ds))
		}
		for i, p := range ds {
			if p[tokens[i]] <= 0 {
				t.Errorf("draft %d has probability %g in its own distribution", tokens[i], p[tokens[i]])
			}
		}
		dists += len(ds)
	}}
	st, _, err := e.GenerateSpec(ctx, Request{Tokens: ids, MaxTokens: 16, Temperature: 0.8, Seed: 4, IgnoreEOS: true}, probe, 4, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Tokens) != 16 || dists == 0 {
		t.Errorf("sampled %d tokens with %d draft distributions; want 16 tokens and some distributions", len(st.Tokens), dists)
	}
	// Another engine's GenerateSpec refuses the drafter up front.
	other, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, _, err := other.GenerateSpec(ctx, Request{Tokens: ids, MaxTokens: 4}, d, 4, func(Token) error { return nil }); err == nil {
		t.Errorf("GenerateSpec on another engine accepted the drafter; want an error")
	}
}

// TestDFlashSampledOnDevice checks the DFlash drafter's sampled block on the device: its drafts
// cost one evaluation (the draft forward, the caches and the draws together) and one read of
// their ids, the distributions stay on the device as [k, vocab], and each row is the softmax at
// the temperature of the draft's logits at that position, computed on the host; Draft, the host
// path, returns the same rows; DraftTop (for a pipeline) the top-k of those rows, renormalised,
// in one evaluation and three reads. In GenerateSpec, which takes the device path, a seed
// repeats its tokens, and every verify step reads back no more than the device path allows.
func TestDFlashSampledOnDevice(t *testing.T) {
	const temp = 0.8
	target, draft := tinyDFlashPair(t)
	ctx := context.Background()
	e, d := openDFlash(t, target, draft)
	k := min(4, d.BlockSize()-1)
	ids, err := e.Prompt(countingPrompt, false)
	if err != nil {
		t.Fatal(err)
	}
	history := append(slices.Clone(ids), 7)
	primeDFlash(t, e, d, history)
	before := mlx.SyncCount()
	toks, q, err := d.draftOnDevice(ctx, history, k, temp, rand.New(rand.NewPCG(7, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if syncs := mlx.SyncCount().Sub(before); syncs != (mlx.Syncs{Evals: 1, Reads: 1}) {
		t.Errorf("sampled draft of %d made %+v host synchronisations; want one evaluation and one read", k, syncs)
	}
	v := e.Config().VocabSize
	var got, logits []float32
	err = e.worker.Do(ctx, func() error {
		defer q.Free()
		if shape := q.Shape(); !slices.Equal(shape, []int{k, v}) {
			return fmt.Errorf("distributions of shape %v; want [%d %d]", shape, k, v)
		}
		var err error
		if got, err = q.Float32s(); err != nil {
			return err
		}
		// The reference: the same history drafted again, its logits read back as they are.
		logits, err = readLogits(d, history, k)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	_, hostDists, err := d.Draft(ctx, history, k, temp, rand.New(rand.NewPCG(7, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != k || len(hostDists) != k {
		t.Fatalf("drafted %d tokens on the device and %d distributions on the host; want %d each", len(toks), len(hostDists), k)
	}
	for j := range k {
		want := probs(logits[j*v:(j+1)*v], temp)
		row := got[j*v : (j+1)*v]
		var sum float64
		for _, p := range row {
			sum += float64(p)
		}
		if diff := maxAbsDiff(row, want); diff > 1e-5 || math.Abs(sum-1) > 1e-3 || row[toks[j]] <= 0 {
			t.Errorf("draft %d (id %d, q %g): device distribution sums to %v and differs from the host's softmax by %g; want 1 and at most 1e-5, with q > 0",
				j, toks[j], row[toks[j]], sum, diff)
		}
		if diff := maxAbsDiff(hostDists[j], want); diff > 1e-5 {
			t.Errorf("draft %d: Draft's distribution differs from the host's softmax by %g; want at most 1e-5", j, diff)
		}
	}
	// DraftTop, for a verifier across a pipeline: each draft comes with the topK most likely
	// tokens of its distribution, renormalised, and is one of them.
	for _, topK := range []int{5, v} {
		before := mlx.SyncCount()
		toks, top, err := d.DraftTop(ctx, history, k, topK, temp, rand.New(rand.NewPCG(7, 8)))
		if err != nil {
			t.Fatal(err)
		}
		if syncs := mlx.SyncCount().Sub(before); syncs != (mlx.Syncs{Evals: 1, Reads: 3}) {
			t.Errorf("top-%d draft of %d made %+v host synchronisations; want one evaluation and three reads", topK, k, syncs)
		}
		if len(toks) != k || len(top) != k {
			t.Fatalf("top-%d draft: %d tokens and %d distributions; want %d each", topK, len(toks), len(top), k)
		}
		for j := range k {
			full := probs(logits[j*v:(j+1)*v], temp)
			want := topProbs(full, topK)
			got := map[int]float32{}
			for _, e := range top[j] {
				got[e.ID] = e.P
			}
			var diff float64
			for id, p := range want {
				diff = math.Max(diff, math.Abs(float64(got[id]-p)))
			}
			if len(got) != len(want) || diff > 1e-5 || got[toks[j]] <= 0 {
				t.Errorf("top-%d draft %d (id %d): %d tokens, probabilities off the host's by up to %g, draft probability %g; want %d tokens, 1e-5 and above 0",
					topK, j, toks[j], len(got), diff, got[toks[j]], len(want))
			}
		}
	}
	if _, _, err := d.DraftTop(ctx, history, k, 0, temp, rand.New(rand.NewPCG(7, 8))); err == nil {
		t.Errorf("DraftTop with top-k 0 succeeded; want an error")
	}
	if err := e.worker.Do(ctx, func() error { e.setTaps(nil); return nil }); err != nil {
		t.Fatal(err)
	}

	req := Request{Tokens: ids, MaxTokens: 16, Temperature: temp, Seed: 5, IgnoreEOS: true}
	var runs [2][]int
	for i := range runs {
		before := mlx.SyncCount()
		st, ss, err := e.GenerateSpec(ctx, req, d, k, func(Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		syncs := mlx.SyncCount().Sub(before)
		if len(st.Tokens) != req.MaxTokens || ss.Drafted == 0 {
			t.Fatalf("sampled DFlash speculation: %d tokens, %d drafted; want %d tokens and some drafts", len(st.Tokens), ss.Drafted, req.MaxTokens)
		}
		// Each draft reads its ids; each verify its flags and tokens; the prefill its token.
		steps := int64(len(st.Steps))
		if syncs.Reads > 3*steps+1 {
			t.Errorf("%d steps read the device %d times; want at most %d (no distribution read back)", steps, syncs.Reads, 3*steps+1)
		}
		runs[i] = st.Tokens
		t.Logf("run %d: %d of %d drafts kept in %d steps, %+v synchronisations", i, ss.Accepted, ss.Drafted, steps, syncs)
	}
	if !slices.Equal(runs[0], runs[1]) {
		t.Errorf("the same seed sampled %v, then %v; want the same tokens", runs[0], runs[1])
	}
}

// topProbs is p truncated to its topK most likely tokens and renormalised, by token id (tokens
// of probability 0 left out).
func topProbs(p []float32, topK int) map[int]float32 {
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(p[b], p[a]) })
	var sum float64
	for _, id := range order[:topK] {
		sum += float64(p[id])
	}
	out := map[int]float32{}
	for _, id := range order[:topK] {
		if p[id] > 0 {
			out[id] = float32(float64(p[id]) / sum)
		}
	}
	return out
}

type probeDrafter struct {
	FeatureDrafter
	check func(tokens []int, dists [][]float32)
}

func (p *probeDrafter) Draft(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, [][]float32, error) {
	tokens, dists, err := p.FeatureDrafter.Draft(ctx, history, k, temperature, rng)
	if err == nil {
		p.check(tokens, dists)
	}
	return tokens, dists, err
}

// TestStageDFlashMatchesEngine checks the pipeline's DFlash drafter against the standalone one: a
// target split over two stages returns the tapped features of the layers each runs (layer 1 on
// stage 0, layer 2 on stage 1), the driver's stage records them in the draft's order, and the
// drafter beside stage 0 (the stage's embedding, the target's untied lm_head loaded on its own)
// drafts what the standalone drafter drafts from scratch: after a prefill in two chunks, and again
// after a verify block whose last drafts were rejected.
func TestStageDFlashMatchesEngine(t *testing.T) {
	target, draft := tinyDFlashPair(t)
	ctx := context.Background()
	s0, err := OpenStage(ctx, StageOptions{Model: target, Range: model.Range{From: 0, To: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer s0.Close()
	s1, err := OpenStage(ctx, StageOptions{Model: target, Range: model.Range{From: 2, To: 4}})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	sd, err := NewStageDFlashDrafter(ctx, s0, draft)
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	if _, err := NewStageDFlashDrafter(ctx, s1, draft); err == nil {
		t.Errorf("NewStageDFlashDrafter on the last stage succeeded; want a refusal (it does not embed)")
	}
	e, rd := openDFlash(t, target, draft)
	if got, want := fmt.Sprint(sd.Layers()), "[1 2]"; got != want {
		t.Fatalf("tapped layers %s; want %s (the preset's)", got, want)
	}
	if err := s0.StartTaps(ctx, sd.Layers()); err != nil {
		t.Fatal(err)
	}
	// pass runs tokens from position pos through both stages, as the pipeline driver does, and
	// records the features; with verify the last stage verifies every position.
	pass := func(pos int, tokens []int, verify bool) {
		t.Helper()
		r0, err := s0.Forward(ctx, Activation{Tokens: tokens, Taps: sd.Layers()}, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		in := Activation{Hidden: r0.Hidden.Hidden, Len: len(tokens), Taps: sd.Layers()}
		var r1 StageResult
		if verify {
			r1, err = s1.Verify(ctx, in, len(tokens))
		} else {
			r1, err = s1.Forward(ctx, in, false, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		feats := append(r0.Features, r1.Features...)
		if len(feats) != 2 || feats[0].Layer != 1 || feats[1].Layer != 2 {
			t.Fatalf("stages returned features of layers %v; want [1 2]", feats)
		}
		if err := s0.RecordTaps(ctx, pos, tokens, [][]byte{feats[0].Data, feats[1].Data}); err != nil {
			t.Fatal(err)
		}
	}
	draftLogits := func(history []int, n int) []float32 {
		t.Helper()
		var out []float32
		err := s0.worker.Do(ctx, func() error {
			var err error
			out, err = readLogits(sd, history, n)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	compare := func(name string, history []int) {
		t.Helper()
		const n = 4
		got := draftLogits(history, n)
		want := scratchLogits(t, e, rd, history, n)
		if diff := maxAbsDiff(got, want); len(got) != len(want) || diff > 1e-3 {
			t.Errorf("%s: pipeline draft logits (%d) differ from standalone (%d) by %g", name, len(got), len(want), diff)
		}
	}
	ids, err := e.Prompt(countingPrompt, false)
	if err != nil {
		t.Fatal(err)
	}
	history := append(append([]int(nil), ids...), 17)
	ctxLen := len(history) - 1 // positions whose features the draft reads
	pass(0, history[:5], false)
	pass(5, history[5:ctxLen], false)
	compare("after prefill", history)
	// A verify block [anchor, a, b, c]: a kept, b rejected, the target's x follows a.
	a, b, c, x := 5, 6, 7, 8
	pass(ctxLen, []int{history[ctxLen], a, b, c}, true)
	history = append(history, a, x)
	compare("after a rejection", history)
}
