package pipeline

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/transport"
)

// GenerateSpec is speculative decoding across the pipeline: the driver drafts up to k tokens
// locally, one pipeline pass verifies the whole block (greedy: the last stage answers with its
// greedy token after every drafted position), and a Reset trims every stage's cache back to what
// was kept. While the block travels through the remote stages, a greedy driver drafts the next
// block on the assumption that everything is accepted, so drafting overlaps the wait: when the
// guess holds, the next step starts with its drafts ready. Greedy output equals standalone greedy
// decoding.
//
// With a temperature the last stage applies the rejection rule of speculative sampling on the
// device (engines.Stage.VerifySampled): the Forward carries the drafts, the distributions they
// were drawn from (their tokens of non-zero probability; none for deterministic drafters) and a
// seed the driver draws from the request's; the first token too is drawn there, from the whole
// distribution. The output is distributed as the target's own samples at that temperature
// (top_p must be 1).
//
// A drafter that conditions on the target's hidden states (a DFlash drafter built with
// engines.NewStageDFlashDrafter on the driver's stage) gets them from every pass: each Forward
// names the tapped layers, every stage returns the outputs of those it runs beside its answer,
// and the driver records them on stage 0 for the drafter. Such a drafter needs the verified
// block's features, so its next draft cannot overlap the verification.
func (d *Driver) GenerateSpec(ctx context.Context, r engines.Request, dr engines.Drafter, k int, emit func(engines.Token) error) (engines.Stats, engines.SpecStats, error) {
	var st engines.Stats
	var ss engines.SpecStats
	if err := engines.CheckRequest(r); err != nil {
		return st, ss, err
	}
	if r.TopP > 0 && r.TopP < 1 {
		return st, ss, fmt.Errorf("pipeline+spec: top_p is not supported with speculative decoding: use top_p 1")
	}
	sampled := r.Temperature > 0
	if k < 1 {
		return st, ss, fmt.Errorf("draft tokens %d: must be at least 1", k)
	}
	if err := dr.Reset(ctx); err != nil {
		return st, ss, err
	}
	eos := map[int]bool{}
	if !r.IgnoreEOS {
		for _, id := range d.tok.EOS() {
			eos[id] = true
		}
	}
	ss.ByPosition, ss.DraftedByPosition = make([]int, k), make([]int, k)
	fd, feature := dr.(featureDrafter)
	var taps []int
	if feature {
		if fd.Stage() != d.first {
			return st, ss, fmt.Errorf("pipeline+spec: the dflash drafter was not built on this driver's stage: build it with engines.NewStageDFlashDrafter(driver.Stage())")
		}
		order := fd.Layers()
		for _, l := range order {
			if !slices.Contains(taps, l) {
				taps = append(taps, l)
			}
		}
		if err := d.first.StartTaps(ctx, order); err != nil {
			return st, ss, err
		}
		defer d.first.StartTaps(context.Background(), nil)
	}
	// The first token comes from an ordinary pipeline prefill (recording the tapped features when
	// the drafter needs them).
	var first engines.Stats
	var err error
	seq := uint64(1 << 32)
	rng := rand.New(rand.NewPCG(r.Seed, 1))
	var order []int
	if feature {
		order = fd.Layers()
	}
	if feature || sampled {
		first, err = d.prefillSpec(ctx, r, taps, order, &seq, rng, emit)
	} else {
		first, err = d.Generate(ctx, engines.Request{Tokens: r.Tokens, MaxTokens: 1, IgnoreEOS: true}, emit)
	}
	if err != nil {
		return first, ss, err
	}
	st = first
	history := append(append([]int(nil), r.Tokens...), first.Tokens...)
	pos := len(r.Tokens) // positions in every stage's cache; the last history token is not fed yet
	var ready []int      // drafts prepared during the previous step, valid for history as it is now
	decodeStart := time.Now()
	for len(st.Tokens) < r.MaxTokens && !eos[history[len(history)-1]] {
		if err := ctx.Err(); err != nil {
			return st, ss, fmt.Errorf("%w: %w", engines.ErrCanceled, err)
		}
		kk := min(k, r.MaxTokens-len(st.Tokens))
		t0 := time.Now()
		drafts := ready
		if len(drafts) > kk {
			drafts = drafts[:kk]
		}
		var dists [][]float32
		var top [][]engines.TokenProb
		if drafts == nil {
			td, truncates := dr.(topDrafter)
			ind, independent := dr.(independentDrafter)
			switch {
			case sampled && truncates && d.ProposalTopK >= 0:
				// The drafter truncates on its device: no whole distribution is read back.
				if drafts, top, err = td.DraftTop(ctx, history, kk, d.proposalTopK(), r.Temperature, rng); err != nil {
					return st, ss, fmt.Errorf("draft: %w", err)
				}
			default:
				if drafts, dists, err = dr.Draft(ctx, history, kk, r.Temperature, rng); err != nil {
					return st, ss, fmt.Errorf("draft: %w", err)
				}
				if sampled && independent && ind.IndependentDrafts() && d.ProposalTopK >= 0 {
					dists = truncateProposals(drafts, dists, d.proposalTopK(), rng)
				}
			}
		}
		draftTime := time.Since(t0)
		ready = nil
		in := append([]int{history[len(history)-1]}, drafts...)
		res, err := d.first.Forward(ctx, engines.Activation{Tokens: in, Taps: taps}, false, 0)
		if err != nil {
			return st, ss, err
		}
		seq++
		fw := transport.Forward{Position: pos, Tokens: len(in), Outputs: len(in), Taps: taps, DType: d.dtype,
			Shape: []int{len(in), d.hidden}}
		if sampled {
			if fw.Sample, err = sampling(r.Temperature, rng.Uint64(), drafts, dists, top); err != nil {
				return st, ss, err
			}
		}
		// Draft the next block while the remote stages verify this one, guessing that every
		// draft is accepted: the drafter's k+1 tokens after history+drafts are then the bonus
		// token and the next block.
		type guess struct {
			tokens []int
			took   time.Duration
			err    error
		}
		next := make(chan guess, 1)
		optimistic := append(append([]int(nil), history...), drafts...)
		if feature || sampled {
			// The next block needs this one's features, or draws from the random stream in turn.
			next <- guess{}
		} else {
			go func() {
				t := time.Now()
				g, _, err := dr.Draft(ctx, optimistic, k+1, 0, rng)
				next <- guess{g, time.Since(t), err}
			}()
		}
		var reply transport.Reply
		t1 := time.Now()
		err = d.call(ctx, seq, &fw, res.Hidden, &reply)
		rtt := time.Since(t1)
		g := <-next
		if err != nil {
			return st, ss, fmt.Errorf("pipeline: %w", err)
		}
		if g.err != nil {
			return st, ss, fmt.Errorf("draft: %w", g.err)
		}
		if !sampled && len(reply.Tokens) != len(in) {
			return st, ss, fmt.Errorf("pipeline: verify of %d positions answered with %d tokens", len(in), len(reply.Tokens))
		}
		if feature {
			if err := d.record(ctx, pos, in, taps, fd.Layers(), res.Features, reply.Features); err != nil {
				return st, ss, err
			}
		}
		var n int
		var kept []int
		if sampled {
			// The last stage applied the rejection rule: the kept drafts, then its own token.
			if n = len(reply.Tokens) - 1; n < 0 || n > len(drafts) {
				return st, ss, fmt.Errorf("pipeline: sampled verify of %d drafts answered with %d tokens", len(drafts), len(reply.Tokens))
			}
			for i, id := range reply.Tokens {
				if i < n && int(id) != drafts[i] {
					return st, ss, fmt.Errorf("pipeline: sampled verify kept token %d at draft position %d, which drafted %d", id, i, drafts[i])
				}
				kept = append(kept, int(id))
			}
		} else {
			for n < len(drafts) && int(reply.Tokens[n]) == drafts[n] {
				n++
			}
			kept = append(drafts[:n:n], int(reply.Tokens[n]))
		}
		pos += 1 + n
		if n < len(drafts) {
			// Trim every stage back to the kept positions.
			if err := d.first.Reset(ctx, pos, 0, 1, 0); err != nil {
				return st, ss, err
			}
			if err := d.next.Send(ctx, d.session, seq, &transport.Reset{Position: pos}); err != nil {
				return st, ss, err
			}
		} else if len(g.tokens) > 1 && g.tokens[0] == kept[len(kept)-1] {
			ready = g.tokens[1:]
		}
		step := engines.Step{StageForward: []time.Duration{res.Forward}, Bytes: int64(len(in)*d.hidden*d.dtype.Size()+4*len(reply.Tokens)) + featureBytes(reply.Features) + sampleBytes(fw.Sample)}
		step.Forward = res.Forward + d.timings(&step, rtt, reply.Timings)
		st.Steps = append(st.Steps, step)
		ss.Steps = append(ss.Steps, engines.SpecStep{Draft: draftTime, Drafted: len(drafts), Accepted: n})
		ss.Drafted += len(drafts)
		ss.Accepted += n
		for i := range drafts {
			ss.DraftedByPosition[i]++
			if i < n {
				ss.ByPosition[i]++
			}
		}
		for _, id := range kept {
			st.Tokens = append(st.Tokens, id)
			history = append(history, id)
			if err := emit(engines.Token{ID: id, Step: step}); err != nil {
				return st, ss, err
			}
			if eos[id] || len(st.Tokens) >= r.MaxTokens {
				break
			}
		}
		st.Decode = time.Since(decodeStart)
	}
	st.FinishReason = "length"
	if eos[history[len(history)-1]] {
		st.FinishReason = "stop"
	}
	st.PeakMemory = d.first.PeakMemory()
	return st, ss, nil
}

// featureDrafter drafts from the target's hidden states, recorded on the driver's stage
// (engines.DFlashDrafter built with engines.NewStageDFlashDrafter).
type featureDrafter interface {
	engines.Drafter
	// Stage is the stage whose record the drafter reads.
	Stage() *engines.Stage
	// Layers lists the target layers it conditions on, in the order it concatenates them.
	Layers() []int
}

// Stage is the driver's own stage 0, for drafters that run beside it.
func (d *Driver) Stage() *engines.Stage { return d.first }

// prefillSpec is the pipeline prefill of Generate (the same chunks, then the last prompt token
// alone, whose successor is the first token), with every pass returning the features of taps (the
// driver records them on stage 0 in the drafter's order, when order is set). With a temperature
// the last stage draws the first token from its whole distribution, with a seed from rng.
func (d *Driver) prefillSpec(ctx context.Context, r engines.Request, taps, order []int, seq *uint64, rng *rand.Rand, emit func(engines.Token) error) (engines.Stats, error) {
	var st engines.Stats
	d.session++
	st.PromptTokens = len(r.Tokens)
	if err := d.first.Reset(ctx, 0, 0, 1, 0); err != nil {
		return st, err
	}
	if err := d.next.Send(ctx, d.session, 0, &transport.Reset{Position: 0}); err != nil {
		return st, err
	}
	start := time.Now()
	pos := 0
	pass := func(tokens []int, last bool) (transport.Reply, error) {
		res, err := d.first.Forward(ctx, engines.Activation{Tokens: tokens, Taps: taps}, false, 0)
		if err != nil {
			return transport.Reply{}, err
		}
		*seq++
		fw := transport.Forward{Position: pos, Tokens: len(tokens), Taps: taps, DType: d.dtype,
			Shape: []int{len(tokens), d.hidden}}
		if last && r.Temperature > 0 {
			fw.Sample = &transport.Sampling{Temperature: float32(r.Temperature), Seed: rng.Uint64()}
		}
		var reply transport.Reply
		if err := d.call(ctx, *seq, &fw, res.Hidden, &reply); err != nil {
			return reply, fmt.Errorf("pipeline: %w", err)
		}
		if order != nil {
			if err := d.record(ctx, pos, tokens, taps, order, res.Features, reply.Features); err != nil {
				return reply, err
			}
		}
		pos += len(tokens)
		return reply, nil
	}
	toks := r.Tokens
	for len(toks) > 1 {
		n := min(engines.PrefillChunk, len(toks)-1)
		if _, err := pass(toks[:n], false); err != nil {
			return st, err
		}
		toks = toks[n:]
	}
	reply, err := pass(toks, true)
	if err != nil {
		return st, err
	}
	if len(reply.Tokens) == 0 {
		return st, fmt.Errorf("pipeline: the last stage replied without a token")
	}
	id := int(reply.Tokens[len(reply.Tokens)-1])
	st.TTFT = time.Since(start)
	st.Prefill = st.TTFT
	st.Tokens = append(st.Tokens, id)
	return st, emit(engines.Token{ID: id})
}

// record checks the features one pass over tokens (from position start) returned, stage 0's own
// and the remote stages', and records them on stage 0 in order, the drafter's layer order.
func (d *Driver) record(ctx context.Context, start int, tokens, taps, order []int, local []engines.Feature, remote []transport.Feature) error {
	got := make(map[int][]byte, len(taps))
	rowBytes := d.hidden * d.dtype.Size()
	for _, f := range local {
		got[f.Layer] = f.Data
	}
	for _, f := range remote {
		switch {
		case !slices.Contains(taps, f.Layer):
			return fmt.Errorf("pipeline: a stage returned the features of layer %d, which was not tapped", f.Layer)
		case got[f.Layer] != nil:
			return fmt.Errorf("pipeline: two stages returned the features of layer %d: check the split", f.Layer)
		case f.DType != d.dtype || f.Rows != len(tokens) || f.Cols != d.hidden || len(f.Data) != len(tokens)*rowBytes:
			return fmt.Errorf("pipeline: the features of layer %d are [%d %d] %s; want [%d %d] %s", f.Layer, f.Rows, f.Cols, f.DType, len(tokens), d.hidden, d.dtype)
		}
		got[f.Layer] = f.Data
	}
	feats := make([][]byte, len(order))
	for i, l := range order {
		if feats[i] = got[l]; feats[i] == nil {
			return fmt.Errorf("pipeline: no stage returned the features of layer %d: every rank must run this build (wire version %d)", l, transport.Version)
		}
	}
	return d.first.RecordTaps(ctx, start, tokens, feats)
}

// featureBytes is the size of the tapped features a reply carried.
func featureBytes(fs []transport.Feature) int64 {
	var n int64
	for _, f := range fs {
		n += int64(len(f.Data))
	}
	return n
}

// sampling describes a sampled verification of drafts at temperature: each draft's distribution
// goes as its tokens of non-zero probability, from the host rows dists or the sparse rows top
// (neither for deterministic drafters).
func sampling(temperature float64, seed uint64, drafts []int, dists [][]float32, top [][]engines.TokenProb) (*transport.Sampling, error) {
	s := &transport.Sampling{Temperature: float32(temperature), Seed: seed, Drafts: drafts}
	if top != nil {
		if len(top) != len(drafts) {
			return nil, fmt.Errorf("draft: %d distributions for %d drafts", len(top), len(drafts))
		}
		s.Proposals = make([][]transport.Prob, len(top))
		for i, row := range top {
			for _, e := range row {
				if e.P > 0 {
					s.Proposals[i] = append(s.Proposals[i], transport.Prob{ID: int32(e.ID), P: e.P})
				}
			}
		}
		return s, nil
	}
	if dists == nil {
		return s, nil
	}
	if len(dists) != len(drafts) {
		return nil, fmt.Errorf("draft: %d distributions for %d drafts", len(dists), len(drafts))
	}
	s.Proposals = make([][]transport.Prob, len(dists))
	for i, q := range dists {
		for id, p := range q {
			if p > 0 {
				s.Proposals[i] = append(s.Proposals[i], transport.Prob{ID: int32(id), P: p})
			}
		}
	}
	return s, nil
}

// sampleBytes is the size of a sampled verification's drafts and proposals on the wire.
func sampleBytes(s *transport.Sampling) int64 {
	if s == nil {
		return 0
	}
	n := int64(4 * len(s.Drafts))
	for _, row := range s.Proposals {
		n += int64(4 + 8*len(row))
	}
	return n
}

// topDrafter is a drafter of independent drafts that truncates each draft's distribution to its
// topK most likely tokens itself, on its device, and draws the draft from the truncated
// distribution, which it returns: what truncateProposals does on the host, without reading whole
// distributions back (engines.DFlashDrafter).
type topDrafter interface {
	DraftTop(ctx context.Context, history []int, k, topK int, temperature float64, rng *rand.Rand) ([]int, [][]engines.TokenProb, error)
}

// proposalTopK is the number of tokens a truncated proposal keeps (see ProposalTopK).
func (d *Driver) proposalTopK() int {
	if d.ProposalTopK == 0 {
		return SampleTopK
	}
	return d.ProposalTopK
}

// independentDrafter is a drafter whose drafts at temperature are each drawn from its own
// distribution, which does not depend on the other drafts' tokens (a block drafter such as
// DFlash), so any one of them may be redrawn from another distribution.
type independentDrafter interface {
	IndependentDrafts() bool
}

// truncateProposals replaces each distribution of dists by its topK most likely tokens,
// renormalised, and redraws the draft at that position from it with rng (drafts is updated in
// place). Rejection sampling then verifies each draft against the distribution it was drawn from.
func truncateProposals(drafts []int, dists [][]float32, topK int, rng *rand.Rand) [][]float32 {
	out := make([][]float32, len(dists))
	for i, q := range dists {
		if i >= len(drafts) {
			break
		}
		best := make([]int, 0, topK+1) // token ids, most likely first
		for id, p := range q {
			if p <= 0 || len(best) == topK && p <= q[best[len(best)-1]] {
				continue
			}
			j := len(best)
			for j > 0 && q[best[j-1]] < p {
				j--
			}
			best = slices.Insert(best, j, id)
			if len(best) > topK {
				best = best[:topK]
			}
		}
		var sum float64
		for _, id := range best {
			sum += float64(q[id])
		}
		t := make([]float32, len(q))
		u := rng.Float64() * sum
		drawn := false
		for _, id := range best {
			t[id] = float32(float64(q[id]) / sum)
			if u -= float64(q[id]); u < 0 && !drawn {
				drafts[i], drawn = id, true
			}
		}
		if !drawn && len(best) > 0 {
			drafts[i] = best[len(best)-1]
		}
		out[i] = t
	}
	return out
}
