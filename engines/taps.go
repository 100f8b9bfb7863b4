package engines

import (
	"fmt"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// FeatureDrafter is an optional ability of a Drafter: it drafts from the target's own hidden
// states (DFlash). While GenerateSpec runs with one, the target records the outputs of the layers
// TapLayers names at every position it prefills or verifies, and the drafter reads them on the
// target's MLX thread.
type FeatureDrafter interface {
	Drafter
	// TapLayers lists the target layers (from 0) to record, in the order the drafter wants them
	// concatenated; it fails when the drafter cannot draft for target e (another engine than the
	// one it was built for).
	TapLayers(e *Engine) ([]int, error)
}

// taps holds the target's recorded hidden states: for each position in [from, from+len(tokens)),
// the concatenated outputs of the tapped layers. Positions are absolute (the caches' offsets), so
// a verify step that starts before the end (after a rejection) replaces what follows it. Used on
// the engine's MLX thread only.
type taps struct {
	layers []int
	// slots[i] lists where the output of target layer i goes in the concatenation.
	slots  map[int][]int
	feats  mlx.Array // [1, len(tokens), len(layers)*hidden], owned; invalid while empty
	from   int
	tokens []int
	// err is why recording failed; the drafter reports it.
	err error
}

func newTaps(layers []int) *taps {
	t := &taps{layers: append([]int(nil), layers...), slots: map[int][]int{}}
	for j, l := range layers {
		t.slots[l] = append(t.slots[l], j)
	}
	return t
}

// setTaps starts recording the given layers (nil stops and frees what was recorded).
func (e *Engine) setTaps(layers []int) {
	if e.taps != nil {
		e.taps.feats.Free()
		e.taps = nil
	}
	if layers != nil {
		e.taps = newTaps(layers)
	}
}

// layers runs every layer on h with the engine's caches. While taps are on it also returns the
// concatenated tapped outputs [1, L, len(layers)*hidden], detached from any scope (the caller owns
// it); otherwise an invalid array, and the loop is the plain one.
func (e *Engine) layers(h mlx.Array) (mlx.Array, mlx.Array) {
	m := e.model
	if e.taps == nil {
		for i, c := range e.caches {
			h = m.Layer(i, h, c)
		}
		return h, mlx.Array{}
	}
	outs := make([]mlx.Array, len(e.taps.layers))
	for i, c := range e.caches {
		h = m.Layer(i, h, c)
		for _, j := range e.taps.slots[i] {
			outs[j] = h
		}
	}
	feat := outs[0]
	if len(outs) > 1 {
		feat = mlx.Concat(2, outs...)
	} else {
		feat = mlx.Copy(feat) // a handle of its own, so that detaching it leaves h in the scope
	}
	mlx.Detach(feat)
	return h, feat
}

// record appends the features of tokens fed from position start and takes ownership of feat (a
// no-op when feat is invalid: taps are off). A failure empties the record and is reported by the
// drafter's next view, so that the target's own step is not failed for it.
func (e *Engine) record(start int, tokens []int, feat mlx.Array) {
	if !feat.Valid() {
		return
	}
	if e.taps == nil {
		feat.Free()
		return
	}
	if err := e.taps.add(start, tokens, feat); err != nil {
		e.setTaps(e.taps.layers)
		e.taps.err = err
	}
}

// add records feat [1, len(tokens), width], the features of tokens fed from position start, and
// takes ownership of it: rows recorded at start and beyond are replaced. On failure the record is
// unchanged but must not be trusted (its caller starts a fresh one).
func (t *taps) add(start int, tokens []int, feat mlx.Array) error {
	s := mlx.NewScope()
	next := feat
	keep := start - t.from // recorded rows that stay: those before start
	if t.feats.Valid() && keep > 0 && keep <= len(t.tokens) {
		old := t.feats
		if keep < len(t.tokens) {
			old = mlx.Slice(old, []int{0, 0, 0}, []int{1, keep, old.Dim(2)})
		}
		next = mlx.Concat(1, old, feat)
		s.Keep(next)
	} else {
		keep = 0
	}
	err := s.Close()
	if err == nil {
		err = mlx.Eval(next)
	}
	if next != feat {
		feat.Free()
	}
	if err != nil {
		next.Free()
		return fmt.Errorf("record target hidden states: %w", err)
	}
	t.feats.Free()
	if keep == 0 {
		t.from = start
	}
	t.feats = next
	t.tokens = append(t.tokens[:keep], tokens...)
	return nil
}

// view returns the recorded features of positions [from, to), in the open scope, after checking
// that they were recorded for history[from:to].
func (t *taps) view(from, to int, history []int) (mlx.Array, error) {
	if t.err != nil {
		return mlx.Array{}, t.err
	}
	end := t.from + len(t.tokens)
	if from < t.from || to > end || from >= to {
		return mlx.Array{}, fmt.Errorf("target hidden states for positions [%d, %d) are not recorded (have [%d, %d))", from, to, t.from, end)
	}
	for p := from; p < to; p++ {
		if t.tokens[p-t.from] != history[p] {
			return mlx.Array{}, fmt.Errorf("target hidden states at position %d were recorded for token %d, the history has %d", p, t.tokens[p-t.from], history[p])
		}
	}
	return mlx.Slice(t.feats, []int{0, from - t.from, 0}, []int{1, to - t.from, t.feats.Dim(2)}), nil
}

// discard forgets the positions before p (the drafter has them in its own cache).
func (t *taps) discard(p int) error {
	drop := p - t.from
	if drop <= 0 || !t.feats.Valid() {
		return nil
	}
	if drop >= len(t.tokens) {
		t.feats.Free()
		t.feats, t.from, t.tokens = mlx.Array{}, p, t.tokens[:0]
		return nil
	}
	s := mlx.NewScope()
	rest := mlx.Slice(t.feats, []int{0, drop, 0}, []int{1, len(t.tokens), t.feats.Dim(2)})
	s.Keep(rest)
	if err := s.Close(); err != nil {
		rest.Free()
		return err
	}
	// The view keeps the old buffer alive until the next record concatenates into a new one.
	t.feats.Free()
	t.feats, t.from = rest, p
	t.tokens = append(t.tokens[:0], t.tokens[drop:]...)
	return nil
}
