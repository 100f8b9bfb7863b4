package engines

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// ModelDrafter drafts with a smaller model that shares the target's tokenizer, keeping its own KV
// cache across steps and trimming it back to what verification kept.
type ModelDrafter struct {
	draft *Engine
}

var _ Drafter = (*ModelDrafter)(nil)

// NewModelDrafter drafts with e (the caller keeps ownership of e).
func NewModelDrafter(e *Engine) *ModelDrafter { return &ModelDrafter{draft: e} }

// Reset implements Drafter.
func (m *ModelDrafter) Reset(ctx context.Context) error {
	e := m.draft
	return e.worker.Do(ctx, func() error {
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		return nil
	})
}

// Draft implements Drafter: k autoregressive steps of the draft model (greedy, or sampled at the
// temperature with the distributions returned).
func (m *ModelDrafter) Draft(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, [][]float32, error) {
	e := m.draft
	var out []int
	var dists [][]float32
	err := e.worker.Do(ctx, func() error {
		pending := e.sync(history)
		if len(pending) == 0 { // everything fed: re-run the last token to get its logits
			for _, c := range e.caches {
				c.Trim(1)
			}
			e.fed = e.fed[:len(e.fed)-1]
			pending = history[len(history)-1:]
		}
		if temperature == 0 && e.taps == nil {
			var err error
			out, err = e.draftGreedy(pending, k)
			return err
		}
		in := pending
		for len(out) < k {
			argmax, lps, _, err := e.scoreAll(in, temperature > 0)
			if err != nil {
				return err
			}
			next := argmax[len(argmax)-1]
			if temperature > 0 {
				p := probs(lps[len(lps)-1], temperature)
				w := make([]float64, len(p))
				var sum float64
				for i, v := range p {
					w[i] = float64(v)
					sum += w[i]
				}
				next = draw(w, sum, rng)
				dists = append(dists, p)
			}
			out = append(out, next)
			in = []int{next}
		}
		return nil
	})
	return out, dists, err
}

// draftGreedy feeds pending and then k-1 of its own greedy choices, each step consuming the
// previous step's token on the device, and reads the k tokens back at once: one host read per
// draft instead of an evaluation and a read per token. The caches end up holding pending and
// the first k-1 drafts, as the step-by-step loop leaves them.
func (e *Engine) draftGreedy(pending []int, k int) ([]int, error) {
	if k < 1 {
		return nil, nil
	}
	ids, err := tokenIDs(pending, e.model.Config().VocabSize)
	if err != nil {
		return nil, err
	}
	s := mlx.NewScope()
	defer s.Close()
	smp := newSampler(0, 0, 0)
	x, n := mlx.FromInt32s(ids, 1, len(ids)), len(ids)
	toks := make([]mlx.Array, 0, k)
	defer func() {
		for _, t := range toks {
			t.Free()
		}
	}()
	for len(toks) < k {
		logits, err := e.logits(x, n, nil)
		if err != nil {
			return nil, err
		}
		tok := smp.next(logits)
		logits.Free()
		toks = append(toks, tok)
		if err := mlx.AsyncEval(tok); err != nil {
			return nil, err
		}
		x, n = mlx.Reshape(tok, 1, 1), 1
	}
	got, err := mlx.Concat(0, toks...).Int32s()
	if err != nil {
		return nil, fmt.Errorf("engines: draft: %w", err)
	}
	out := make([]int, len(got))
	for i, v := range got {
		out[i] = int(v)
	}
	e.fed = append(append(e.fed, pending...), out[:k-1]...)
	return out, nil
}

// LookupDrafter drafts without weights by prompt lookup: it finds the most recent earlier
// occurrence of the longest suffix of the history (up to MaxNgram tokens, at least MinNgram) and
// proposes the tokens that followed it. Text that repeats itself (code, quotes, lists) drafts well.
type LookupDrafter struct {
	MaxNgram, MinNgram int
}

var _ Drafter = LookupDrafter{}

// Reset implements Drafter.
func (LookupDrafter) Reset(context.Context) error { return nil }

// Draft implements Drafter.
func (l LookupDrafter) Draft(_ context.Context, history []int, k int, _ float64, _ *rand.Rand) ([]int, [][]float32, error) {
	maxN, minN := l.MaxNgram, l.MinNgram
	if maxN == 0 {
		maxN = 4
	}
	if minN == 0 {
		minN = 1
	}
	h := len(history)
	for n := min(maxN, h-1); n >= minN; n-- {
		suffix := history[h-n:]
		for start := h - n - 1; start >= 0; start-- {
			if equalTokens(history[start:start+n], suffix) {
				from := start + n
				end := min(from+k, h)
				if end > from {
					return append([]int(nil), history[from:end]...), nil, nil
				}
			}
		}
	}
	return nil, nil, nil
}

func equalTokens(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
