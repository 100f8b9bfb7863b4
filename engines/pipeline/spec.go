package pipeline

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/transport"
)

// GenerateSpec is speculative decoding across the pipeline (greedy): the driver drafts up to k
// tokens locally, one pipeline pass verifies the whole block (the last stage answers with its
// greedy token after every drafted position), and a Reset trims every stage's cache back to what
// was kept. While the block travels through the remote stages, the driver drafts the next block
// on the assumption that everything is accepted, so drafting overlaps the wait: when the guess
// holds, the next step starts with its drafts ready. Output equals standalone greedy decoding.
func (d *Driver) GenerateSpec(ctx context.Context, r engines.Request, dr engines.Drafter, k int, emit func(engines.Token) error) (engines.Stats, engines.SpecStats, error) {
	var st engines.Stats
	var ss engines.SpecStats
	if err := engines.CheckRequest(r); err != nil {
		return st, ss, err
	}
	if r.Temperature != 0 {
		return st, ss, fmt.Errorf("pipeline+spec supports greedy decoding only: use --temperature 0")
	}
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
	// The first token comes from an ordinary pipeline prefill.
	var first engines.Stats
	var err error
	first, err = d.Generate(ctx, engines.Request{Tokens: r.Tokens, MaxTokens: 1, IgnoreEOS: true}, emit)
	if err != nil {
		return first, ss, err
	}
	st = first
	history := append(append([]int(nil), r.Tokens...), first.Tokens...)
	pos := len(r.Tokens) // positions in every stage's cache; the last history token is not fed yet
	seq := uint64(1 << 32)
	rng := rand.New(rand.NewPCG(r.Seed, 1))
	var ready []int // drafts prepared during the previous step, valid for history as it is now
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
		if drafts == nil {
			if drafts, _, err = dr.Draft(ctx, history, kk, 0, rng); err != nil {
				return st, ss, fmt.Errorf("draft: %w", err)
			}
		}
		draftTime := time.Since(t0)
		ready = nil
		in := append([]int{history[len(history)-1]}, drafts...)
		res, err := d.first.Forward(ctx, engines.Activation{Tokens: in}, false, 0)
		if err != nil {
			return st, ss, err
		}
		seq++
		fw := transport.Forward{Position: pos, Tokens: len(in), Outputs: len(in), DType: d.dtype,
			Shape: []int{len(in), d.hidden}}
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
		go func() {
			t := time.Now()
			g, _, err := dr.Draft(ctx, optimistic, k+1, 0, rng)
			next <- guess{g, time.Since(t), err}
		}()
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
		if len(reply.Tokens) != len(in) {
			return st, ss, fmt.Errorf("pipeline: verify of %d positions answered with %d tokens", len(in), len(reply.Tokens))
		}
		n := 0
		for n < len(drafts) && int(reply.Tokens[n]) == drafts[n] {
			n++
		}
		kept := append(drafts[:n:n], int(reply.Tokens[n]))
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
		step := engines.Step{StageForward: []time.Duration{res.Forward}, Bytes: int64(len(in)*d.hidden*d.dtype.Size() + 4*len(reply.Tokens))}
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
