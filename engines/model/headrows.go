package model

import (
	"fmt"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// VocabSubset is a subset of a vocabulary held on the device, for a head that scores only those
// tokens: it maps a column of the subset's logits to its token id, and spreads values over the
// subset back over the whole vocabulary. Free releases it.
type VocabSubset struct {
	// ids [n] int32 is the token id of each column; out [vocab] int32 the column of each token,
	// or n for a token outside the subset (the column Expand appends).
	ids, out mlx.Array
	n, vocab int
}

// NewVocabSubset puts the subset ids (distinct, each in [0, vocab)) on the device. Must run on
// the MLX thread.
func NewVocabSubset(ids []int, vocab int) (*VocabSubset, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("model: vocabulary subset: no ids")
	}
	col := make([]int32, len(ids))
	out := make([]int32, vocab)
	for t := range out {
		out[t] = int32(len(ids))
	}
	for i, t := range ids {
		if t < 0 || t >= vocab {
			return nil, fmt.Errorf("model: vocabulary subset: id %d is outside the vocabulary of %d", t, vocab)
		}
		if out[t] != int32(len(ids)) {
			return nil, fmt.Errorf("model: vocabulary subset: id %d is listed twice", t)
		}
		col[i], out[t] = int32(t), int32(i)
	}
	v := &VocabSubset{n: len(ids), vocab: vocab}
	v.ids = mlx.FromInt32s(col, len(col))
	v.out = mlx.FromInt32s(out, len(out))
	mlx.Detach(v.ids, v.out) // owned by v, whatever scope is open
	if err := mlx.Eval(v.ids, v.out); err != nil {
		v.Free()
		return nil, fmt.Errorf("model: vocabulary subset: %w", err)
	}
	return v, nil
}

// Len is the number of tokens in the subset.
func (v *VocabSubset) Len() int { return v.n }

// IDs is the subset's token ids [n] int32, in column order (owned by v).
func (v *VocabSubset) IDs() mlx.Array { return v.ids }

// ToVocab maps columns of the subset (any shape of integers) to their token ids, int32.
func (v *VocabSubset) ToVocab(cols mlx.Array) mlx.Array { return mlx.Take(v.ids, cols, 0) }

// Expand spreads x [..., n], a value per column of the subset, over the whole vocabulary:
// [..., vocab] with fill at every token outside the subset (exactly: the fill is copied, not
// computed). It scatters by gathering from x with one appended fill column.
func (v *VocabSubset) Expand(x mlx.Array, fill float64) mlx.Array {
	shape := x.Shape()
	shape[len(shape)-1] = 1
	return mlx.Take(mlx.Concat(-1, x, mlx.Full(fill, x.DType(), shape...)), v.out, -1)
}

// Free releases the device arrays.
func (v *VocabSubset) Free() {
	v.ids.Free()
	v.out.Free()
}

// RowSelector is an optional ability of an Unembedder: cutting its head down to some of its rows.
type RowSelector interface {
	// HeadRows gathers the head's rows for ids (distinct token ids) into a head of their own.
	// Must run on the MLX thread.
	HeadRows(ids []int) (*HeadRows, error)
}

var (
	_ RowSelector = (*decoder)(nil)
	_ RowSelector = (*Head)(nil)
)

// HeadRows is the rows of an lm_head for a subset of the vocabulary, copied out of the full head
// once (dense or quantized, in whatever layout the head holds them), so that projecting onto the
// subset costs n rows instead of the whole vocabulary. Close frees it; it does not depend on the
// head it was cut from after HeadRows returns.
type HeadRows struct {
	lin   *Linear
	sub   *VocabSubset
	owned []mlx.Array
}

// HeadRows implements RowSelector.
func (d *decoder) HeadRows(ids []int) (*HeadRows, error) {
	if d.lmHead != nil {
		return headRows(d.lmHead, ids, d.cfg.VocabSize)
	}
	return headRows(&d.embed.Linear, ids, d.cfg.VocabSize)
}

// HeadRows implements RowSelector.
func (h *Head) HeadRows(ids []int) (*HeadRows, error) {
	return headRows(h.lin, ids, h.vocab)
}

// headRows gathers l's output rows ids. l's dense weight is held as w [out, in] with wT its
// transposed view, or as wT [in, out] alone (WeightLayout); a quantized weight as rows of packed
// words with a row of scales and biases each.
func headRows(l *Linear, ids []int, vocab int) (*HeadRows, error) {
	sub, err := NewVocabSubset(ids, vocab)
	if err != nil {
		return nil, err
	}
	r := &HeadRows{lin: &Linear{groupSize: l.groupSize, bits: l.bits}, sub: sub}
	s := mlx.NewScope()
	idx := sub.IDs()
	switch {
	case l.scales.Valid():
		r.lin.w = mlx.Take(l.w, idx, 0)
		r.lin.scales = mlx.Take(l.scales, idx, 0)
		r.lin.biases = mlx.Take(l.biases, idx, 0)
		r.owned = append(r.owned, r.lin.w, r.lin.scales, r.lin.biases)
	case l.w.Valid():
		r.lin.w = mlx.Take(l.w, idx, 0)
		r.lin.wT = mlx.Transpose(r.lin.w, 1, 0)
		r.owned = append(r.owned, r.lin.w, r.lin.wT)
	default:
		r.lin.wT = mlx.Take(l.wT, idx, 1)
		r.owned = append(r.owned, r.lin.wT)
	}
	if l.bias.Valid() {
		r.lin.bias = mlx.Take(l.bias, idx, 0)
		r.owned = append(r.owned, r.lin.bias)
	}
	s.Keep(r.owned...)
	err = s.Close()
	if err == nil {
		err = mlx.Eval(r.owned...)
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("model: head rows: %w", err)
	}
	return r, nil
}

// Subset is the tokens the rows score, in column order (owned by r).
func (r *HeadRows) Subset() *VocabSubset { return r.sub }

// Unembed maps hidden states [..., hidden] to the subset's logits [..., n]: column i scores token
// Subset().IDs()[i].
func (r *HeadRows) Unembed(x mlx.Array) mlx.Array { return r.lin.Forward(x) }

// Close frees the rows and the subset.
func (r *HeadRows) Close() {
	for _, a := range r.owned {
		a.Free()
	}
	r.owned = nil
	r.sub.Free()
}
