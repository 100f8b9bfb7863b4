package model

import "github.com/hippo-bench/hippo/engines/mlx"

// RowLayer is implemented by models that can run one decode step of several independent sequences
// in one pass: the projections and the MLP see all rows at once (their weights are read once per
// step, which is what batching buys on bandwidth-bound decoding), while RoPE and attention run per
// row against that row's own cache, at its own position.
type RowLayer interface {
	// LayerRows runs block i on h [B, 1, hidden], row r being the next token of the sequence whose
	// layer-i cache is caches[r] (len(caches) == B). Each row's result equals Layer on that row
	// alone up to the rounding of the batched matrix products (see engines.Batcher).
	LayerRows(i int, h mlx.Array, caches []Cache) mlx.Array
}

// LayerRows runs block i for B single-token rows with a cache each: through m's RowLayer when it
// has one, otherwise row by row with Layer (correct for every model, with no batching gain).
func LayerRows(m Model, i int, h mlx.Array, caches []Cache) mlx.Array {
	if rl, ok := m.(RowLayer); ok {
		return rl.LayerRows(i, h, caches)
	}
	if len(caches) == 1 {
		return m.Layer(i, h, caches[0])
	}
	outs := make([]mlx.Array, len(caches))
	hid := h.Dim(2)
	for r, c := range caches {
		outs[r] = m.Layer(i, mlx.Slice(h, []int{r, 0, 0}, []int{r + 1, 1, hid}), c)
	}
	return mlx.Concat(0, outs...)
}

var _ RowLayer = (*decoder)(nil)

// LayerRows implements RowLayer with the op order of Layer.
func (d *decoder) LayerRows(i int, x mlx.Array, caches []Cache) mlx.Array {
	l := &d.layers[i]
	r := d.attentionRows(l, mlx.RMSNorm(x, l.inputNorm, d.eps), caches)
	h := mlx.Add(x, r)
	n := mlx.RMSNorm(h, l.postNorm, d.eps)
	g := l.gate.Forward(n)
	r = l.down.Forward(mlx.SwiGLU(g, l.up.Forward(n)))
	return mlx.Add(h, r)
}

func (d *decoder) attentionRows(l *decoderLayer, x mlx.Array, caches []Cache) mlx.Array {
	b := len(caches)
	q := mlx.Reshape(l.q.Forward(x), b, 1, d.heads, -1)
	k := mlx.Reshape(l.k.Forward(x), b, 1, d.kvh, -1)
	v := mlx.Transpose(mlx.Reshape(l.v.Forward(x), b, 1, d.kvh, -1), 0, 2, 1, 3)
	if d.qkNorm {
		q = mlx.RMSNorm(q, l.qNorm, d.eps)
		k = mlx.RMSNorm(k, l.kNorm, d.eps)
	}
	q = mlx.Transpose(q, 0, 2, 1, 3)
	k = mlx.Transpose(k, 0, 2, 1, 3)
	hd := q.Dim(3)
	outs := make([]mlx.Array, b)
	for r, c := range caches {
		row := func(a mlx.Array, heads int) mlx.Array {
			return mlx.Slice(a, []int{r, 0, 0, 0}, []int{r + 1, heads, 1, hd})
		}
		off := c.Offset()
		qr := d.rope.apply(row(q, d.heads), off)
		kr := d.rope.apply(row(k, d.kvh), off)
		kr, vr := c.Update(kr, row(v, d.kvh))
		outs[r] = mlx.SDPA(qr, kr, vr, d.scale, mlx.MaskNone, mlx.Array{})
	}
	o := outs[0]
	if b > 1 {
		o = mlx.Concat(0, outs...)
	}
	return l.o.Forward(mlx.Reshape(mlx.Transpose(o, 0, 2, 1, 3), b, 1, -1))
}
