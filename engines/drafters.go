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

var (
	_ Drafter       = (*ModelDrafter)(nil)
	_ deviceDrafter = (*ModelDrafter)(nil)
)

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
// temperature with the distributions returned). Sampled drafts are drawn on the device, as
// draftOnDevice does, and their distributions then read back at once.
func (m *ModelDrafter) Draft(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, [][]float32, error) {
	e := m.draft
	var out []int
	var dists [][]float32
	err := e.worker.Do(ctx, func() error {
		pending := m.pending(history)
		if temperature == 0 && e.taps == nil {
			var err error
			out, err = e.draftGreedy(pending, k)
			return err
		}
		if temperature > 0 && e.taps == nil {
			toks, q, err := e.draftSampled(pending, k, temperature, rng.Uint64())
			if err != nil || !q.Valid() { // invalid: nothing drafted (k < 1)
				return err
			}
			defer q.Free()
			if dists, err = hostRows(q); err != nil {
				return fmt.Errorf("engines: draft: %w", err)
			}
			out = toks
			return nil
		}
		// A draft engine that records taps (it is also a DFlash target) feeds known ids step by step.
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

// draftOnDevice implements deviceDrafter: Draft at a temperature above 0 whose distributions stay
// on the device, so a draft step reads back k token ids and never a vocabulary-sized row.
func (m *ModelDrafter) draftOnDevice(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, mlx.Array, error) {
	e := m.draft
	if e.taps != nil { // see Draft: the device path cannot record taps of ids it has not read
		toks, dists, err := m.Draft(ctx, history, k, temperature, rng)
		if err != nil {
			return nil, mlx.Array{}, err
		}
		var q mlx.Array
		err = e.worker.Do(ctx, func() error {
			v := 0
			if len(dists) > 0 {
				v = len(dists[0])
			}
			q, err = proposal{dists: dists}.array(len(toks), v)
			mlx.Detach(q)
			return err
		})
		return toks, q, err
	}
	var out []int
	var q mlx.Array
	err := e.worker.Do(ctx, func() error {
		var err error
		out, q, err = e.draftSampled(m.pending(history), k, temperature, rng.Uint64())
		return err
	})
	return out, q, err
}

// pending syncs the draft's caches to history and returns the tokens to feed; when everything is
// fed already, the last token is trimmed and fed again to get its logits. Must run on the draft
// engine's thread.
func (m *ModelDrafter) pending(history []int) []int {
	e := m.draft
	pending := e.sync(history)
	if len(pending) == 0 {
		for _, c := range e.caches {
			c.Trim(1)
		}
		e.fed = e.fed[:len(e.fed)-1]
		pending = history[len(history)-1:]
	}
	return pending
}

// draftSampled is draftGreedy at a temperature: each step draws its token on the device from
// q = softmax(logits / temperature), with keys split from seed, and feeds it to the next step
// without a host read. It returns the k drafts, read back at once, and their distributions q as
// an evaluated float32 array [k, vocab] that the caller owns and frees. q is evaluated before
// it is returned, so that another worker (the target verifying the drafts) may read it in its
// turn. The caches end up as draftGreedy leaves them.
func (e *Engine) draftSampled(pending []int, k int, temperature float64, seed uint64) ([]int, mlx.Array, error) {
	var key mlx.Array
	return e.draftChain(pending, k, func(logits mlx.Array) (mlx.Array, mlx.Array) {
		if !key.Valid() { // made inside draftChain's scope, which frees it
			key = mlx.RandomKey(seed)
		}
		var sub mlx.Array
		key, sub = mlx.RandomSplit(key)
		return drawRows(logits, temperature, sub) // a token [1] drawn from q [1, vocab]
	})
}

// draftGreedy feeds pending and then k-1 of its own greedy choices, each step consuming the
// previous step's token on the device, and reads the k tokens back at once: one host read per
// draft instead of an evaluation and a read per token. The caches end up holding pending and
// the first k-1 drafts, as the step-by-step loop leaves them.
func (e *Engine) draftGreedy(pending []int, k int) ([]int, error) {
	smp := newSampler(0, 0, 0)
	var picked []mlx.Array // the sampler's tokens are not the scope's: free them here
	defer func() {
		for _, t := range picked {
			t.Free()
		}
	}()
	out, _, err := e.draftChain(pending, k, func(logits mlx.Array) (mlx.Array, mlx.Array) {
		t := smp.next(logits)
		picked = append(picked, t)
		return t, mlx.Array{}
	})
	return out, err
}

// draftChain runs the k draft steps of draftGreedy and draftSampled: it feeds pending, then each
// step's own token, chosen on the device by choose from that step's logits. choose may also
// return the distribution the token was drawn from; those are stacked into q [k, vocab],
// evaluated with the tokens and detached for the caller to free (invalid when choose returns
// none). The k tokens are read back at once.
func (e *Engine) draftChain(pending []int, k int, choose func(logits mlx.Array) (tok, q mlx.Array)) ([]int, mlx.Array, error) {
	if k < 1 {
		return nil, mlx.Array{}, nil
	}
	ids, err := tokenIDs(pending, e.model.Config().VocabSize)
	if err != nil {
		return nil, mlx.Array{}, err
	}
	s := mlx.NewScope()
	defer s.Close()
	x, n := mlx.FromInt32s(ids, 1, len(ids)), len(ids)
	toks := make([]mlx.Array, 0, k)
	var qs []mlx.Array
	for len(toks) < k {
		logits, err := e.logits(x, n, nil)
		if err != nil {
			return nil, mlx.Array{}, err
		}
		tok, q := choose(logits)
		logits.Free()
		toks = append(toks, tok)
		if q.Valid() {
			qs = append(qs, q)
		}
		if err := mlx.AsyncEval(tok); err != nil {
			return nil, mlx.Array{}, err
		}
		x, n = mlx.Reshape(tok, 1, 1), 1
	}
	all := mlx.Concat(0, toks...)
	var q mlx.Array
	if len(qs) > 0 {
		q = mlx.Concat(0, qs...)
		if err := mlx.Eval(all, q); err != nil {
			return nil, mlx.Array{}, fmt.Errorf("engines: draft: %w", err)
		}
	}
	got, err := all.Int32s()
	if err != nil {
		return nil, mlx.Array{}, fmt.Errorf("engines: draft: %w", err)
	}
	out := make([]int, len(got))
	for i, v := range got {
		out[i] = int(v)
	}
	e.fed = append(append(e.fed, pending...), out[:k-1]...)
	if q.Valid() {
		mlx.Detach(q)
	}
	return out, q, nil
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
