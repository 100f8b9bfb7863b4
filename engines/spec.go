package engines

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Drafter proposes tokens for speculative decoding. Calls come from one goroutine, one at a time.
type Drafter interface {
	// Draft proposes up to k tokens that continue history (the prompt and every token generated
	// so far). With temperature > 0 it also returns, for each proposed token, the distribution
	// it was drawn from (a probability per vocabulary id); deterministic drafters return nil
	// and are treated as one-hot.
	Draft(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) (tokens []int, dists [][]float32, err error)
	// Reset starts a new request.
	Reset(ctx context.Context) error
}

// SpecStep extends Step with what one speculative step did.
type SpecStep struct {
	Draft    time.Duration
	Drafted  int
	Accepted int
}

// fed tracks which tokens a cache holds, so that caches can be trimmed back to the longest
// prefix they share with the tokens that survived verification.
type fed []int

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []int) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// sync trims e's caches to the longest prefix shared by what they hold and history, and returns
// the tokens of history still to be fed.
func (e *Engine) sync(history []int) []int {
	keep := commonPrefix(e.fed, history)
	if drop := len(e.fed) - keep; drop > 0 {
		for _, c := range e.caches {
			c.Trim(drop)
		}
		e.fed = e.fed[:keep]
	}
	return history[keep:]
}

// scoreAll feeds tokens to the model and returns the standalone sampler's greedy choice at every
// position and, with wantProbs, the log-probabilities of every position, [len(tokens), vocab], as
// float32 on the host. normalised reports that the greedy choice needed the normalised logits (a
// possible tie after rounding; see greedyPicks); with wantProbs they are always normalised. Must
// run on the engine's thread.
func (e *Engine) scoreAll(tokens []int, wantProbs bool) (argmax []int, logProbs [][]float32, normalised bool, err error) {
	ids, err := tokenIDs(tokens, e.model.Config().VocabSize)
	if err != nil {
		return nil, nil, false, err
	}
	s := mlx.NewScope()
	defer s.Close()
	m := e.model
	start := e.caches[0].Offset()
	h, feat := e.layers(m.Embed(mlx.FromInt32s(ids, 1, len(ids))))
	defer e.record(start, tokens, feat)
	logits := mlx.Reshape(m.Head(h), len(tokens), -1)
	if !wantProbs {
		// The standalone sampler's pick without normalising the block, unless a row may tie.
		argmax, normalised, err := greedyPicks(logits)
		if err != nil {
			return nil, nil, false, err
		}
		e.fed = append(e.fed, tokens...)
		return argmax, nil, normalised, nil
	}
	// As in sampling: normalise first, so that greedy picks what the standalone sampler picks.
	lp := mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
	am := mlx.AsType(mlx.Argmax(lp, -1, false), mlx.Int32)
	if err := mlx.Eval(am); err != nil {
		return nil, nil, false, err
	}
	e.fed = append(e.fed, tokens...)
	a, err := am.Int32s()
	if err != nil {
		return nil, nil, false, err
	}
	argmax = make([]int, len(a))
	for i, v := range a {
		argmax[i] = int(v)
	}
	flat, err := mlx.AsType(lp, mlx.Float32).Float32s()
	if err != nil {
		return nil, nil, false, err
	}
	v := len(flat) / len(tokens)
	for i := range tokens {
		logProbs = append(logProbs, flat[i*v:(i+1)*v])
	}
	return argmax, logProbs, true, nil
}

// scoreSampled feeds tokens to the model and applies the rejection rule on the device to the
// drafts, which follow position base (see sampleVerify), proposed from prop: it returns the kept
// drafts and the target's own next token, reading back only token ids and acceptance flags. The
// key comes from smp's chain. Must run on the engine's thread.
func (e *Engine) scoreSampled(tokens []int, base int, drafts []int, prop proposal, temperature float64, smp *sampler) ([]int, error) {
	ids, err := tokenIDs(tokens, e.model.Config().VocabSize)
	if err != nil {
		return nil, err
	}
	s := mlx.NewScope()
	defer s.Close()
	m := e.model
	start := e.caches[0].Offset()
	h, feat := e.layers(m.Embed(mlx.FromInt32s(ids, 1, len(ids))))
	defer e.record(start, tokens, feat)
	// Only the K+1 positions that decide anything go through the head.
	h = mlx.Slice(h, []int{0, base, 0}, []int{1, len(tokens), h.Dim(2)})
	logits := mlx.Reshape(m.Head(h), len(tokens)-base, -1)
	next, sub := mlx.RandomSplit(smp.key)
	mlx.Detach(next)
	smp.key.Free()
	smp.key = next
	q, err := prop.array(len(drafts), logits.Dim(1))
	if err != nil {
		return nil, err
	}
	out, err := sampleVerify(logits, drafts, q, temperature, sub)
	if err != nil {
		return nil, err
	}
	e.fed = append(e.fed, tokens...)
	return out, nil
}

// GenerateSpec is Generate with speculative decoding: d proposes up to k tokens, the model
// verifies them in one forward, and the caches of both are trimmed back after a rejection.
// Greedy output equals Generate's; with a temperature, the standard rejection rule keeps the
// output distribution the target's own. Stats.Steps has one entry per verify step.
func (e *Engine) GenerateSpec(ctx context.Context, r Request, d Drafter, k int, emit func(Token) error) (Stats, SpecStats, error) {
	var st Stats
	var ss SpecStats
	if err := CheckRequest(r); err != nil {
		return st, ss, err
	}
	if k < 1 {
		return st, ss, fmt.Errorf("engines: draft tokens %d: must be at least 1", k)
	}
	if r.TopP > 0 && r.TopP < 1 {
		return st, ss, fmt.Errorf("engines: top_p is not supported with speculative decoding: use top_p 1")
	}
	eos := map[int]bool{}
	if !r.IgnoreEOS {
		for _, id := range e.tok.EOS() {
			eos[id] = true
		}
	}
	if err := d.Reset(ctx); err != nil {
		return st, ss, err
	}
	// A drafter that reads the target's hidden states (DFlash) gets them recorded for the
	// request; the plain path records nothing.
	var tapped []int
	if fd, ok := d.(FeatureDrafter); ok {
		var err error
		if tapped, err = fd.TapLayers(e); err != nil {
			return st, ss, err
		}
		defer e.worker.Do(context.Background(), func() error { e.setTaps(nil); return nil })
	}
	rng := rand.New(rand.NewPCG(r.Seed, 0xD1B54A32D192ED03))
	ss.ByPosition = make([]int, k)
	ss.DraftedByPosition = make([]int, k)
	st.PromptTokens = len(r.Tokens)
	history := append([]int(nil), r.Tokens...)
	start := time.Now()
	// The prefill's sampler; with a temperature its key chain also drives the verify steps.
	var smp *sampler
	defer e.worker.Do(context.Background(), func() error {
		if smp != nil {
			smp.free()
		}
		return nil
	})
	err := e.worker.Do(ctx, func() error {
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		e.setTaps(tapped)
		mlx.ResetPeakMemory()
		// Prefill exactly as Generate does, then sample the first token from the last position.
		logits, err := e.prefill(r.Tokens)
		if err != nil {
			return err
		}
		e.fed = append(e.fed, r.Tokens...)
		smp = newSampler(r.Temperature, 1, r.Seed)
		id, err := smp.sample(logits)
		logits.Free()
		if err != nil {
			return err
		}
		st.Prefill = time.Since(start)
		st.TTFT = st.Prefill
		st.Tokens = append(st.Tokens, id)
		history = append(history, id)
		return emit(Token{ID: id})
	})
	if err != nil || eos[history[len(history)-1]] || len(st.Tokens) >= r.MaxTokens {
		st.FinishReason = finish(eos, st.Tokens)
		return st, ss, err
	}
	decodeStart := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return st, ss, fmt.Errorf("%w: %w", ErrCanceled, err)
		}
		kk := min(k, r.MaxTokens-len(st.Tokens))
		t0 := time.Now()
		// A device drafter's sampled proposal stays on the device until the verify step frees it.
		var drafts []int
		var prop proposal
		var err error
		if dd, ok := d.(deviceDrafter); ok && r.Temperature > 0 {
			drafts, prop.q, err = dd.draftOnDevice(ctx, history, kk, r.Temperature, rng)
		} else {
			drafts, prop.dists, err = d.Draft(ctx, history, kk, r.Temperature, rng)
		}
		if err != nil {
			return st, ss, fmt.Errorf("draft: %w", err)
		}
		draftTime := time.Since(t0)
		var accepted []int
		t1 := time.Now()
		verified := false
		err = e.worker.Do(ctx, func() error {
			verified = true
			defer prop.q.Free()
			pending := e.sync(history[:len(history)-1])
			in := append(append(pending, history[len(history)-1]), drafts...)
			// Position j of the verify output predicts the token after in[j]; the drafts start
			// after the last history token, at offset len(pending).
			base := len(pending)
			if r.Temperature > 0 {
				accepted, err = e.scoreSampled(in, base, drafts, prop, r.Temperature, smp)
				return err
			}
			argmax, _, normalised, err := e.scoreAll(in, false)
			if err != nil {
				return err
			}
			if normalised {
				ss.Normalised++
			}
			accepted = verify(drafts, argmax[base:])
			return nil
		})
		if !verified && prop.q.Valid() { // the context ended before the verify step ran
			e.worker.Do(context.Background(), func() error { prop.q.Free(); return nil })
		}
		if err != nil {
			return st, ss, err
		}
		verifyTime := time.Since(t1)
		n := len(accepted) - 1 // drafts kept; the last entry is the target's own token
		ss.Drafted += len(drafts)
		ss.Accepted += n
		for i := range drafts {
			ss.DraftedByPosition[i]++
			if i < n {
				ss.ByPosition[i]++
			}
		}
		step := Step{Forward: verifyTime}
		st.Steps = append(st.Steps, step)
		ss.Steps = append(ss.Steps, SpecStep{Draft: draftTime, Drafted: len(drafts), Accepted: n})
		for _, id := range accepted {
			st.Tokens = append(st.Tokens, id)
			history = append(history, id)
			if err := emit(Token{ID: id, Step: step}); err != nil {
				return st, ss, err
			}
			if eos[id] || len(st.Tokens) >= r.MaxTokens {
				st.Decode = time.Since(decodeStart)
				st.FinishReason = finish(eos, st.Tokens)
				_, st.PeakMemory, _ = memory(e.worker)
				return st, ss, nil
			}
		}
		st.Decode = time.Since(decodeStart)
	}
}

func finish(eos map[int]bool, tokens []int) string {
	if len(tokens) > 0 && eos[tokens[len(tokens)-1]] {
		return "stop"
	}
	return "length"
}

// SpecStats summarises speculation over a request.
type SpecStats struct {
	Drafted, Accepted int
	// Normalised counts the greedy verify steps that normalised the logits because a position
	// might tie after rounding (see greedyPicks); the others took the raw argmax.
	Normalised int
	// ByPosition[i] counts accepted drafts at position i; DraftedByPosition[i] how many were
	// proposed there.
	ByPosition, DraftedByPosition []int
	Steps                         []SpecStep
}

// verify decides which drafts to keep under greedy decoding: target[j] is the target's greedy
// choice after drafts[:j]. It returns the kept drafts followed by one token from the target (the
// correction, or the bonus token when every draft was kept). Sampling keeps drafts on the device
// instead (sampleVerify).
func verify(drafts []int, target []int) []int {
	out := make([]int, 0, len(drafts)+1)
	for j, d := range drafts {
		if target[j] != d {
			return append(out, target[j])
		}
		out = append(out, d)
	}
	return append(out, target[len(drafts)])
}

// probs turns log-probabilities into probabilities at a temperature.
func probs(lp []float32, temperature float64) []float32 {
	mx := float32(math.Inf(-1))
	for _, v := range lp {
		mx = max(mx, v)
	}
	out := make([]float32, len(lp))
	var sum float64
	for i, v := range lp {
		e := math.Exp(float64(v-mx) / temperature)
		out[i] = float32(e)
		sum += e
	}
	for i := range out {
		out[i] = float32(float64(out[i]) / sum)
	}
	return out
}

func draw(w []float64, sum float64, rng *rand.Rand) int {
	u := rng.Float64() * sum
	for i, x := range w {
		if u < x {
			return i
		}
		u -= x
	}
	for i := len(w) - 1; i >= 0; i-- {
		if w[i] > 0 {
			return i
		}
	}
	return len(w) - 1
}
