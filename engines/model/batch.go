package model

import "github.com/hippo-bench/hippo/engines/mlx"

// RowLayer is implemented by models that can run several independent sequences in one pass: the
// projections and the MLP see all rows at once (their weights are read once per step, which is
// what batching buys on bandwidth-bound decoding), while RoPE and attention run per row against
// that row's own cache, at its own position.
type RowLayer interface {
	// LayerRows runs block i on h [B, L, hidden], row r being the next L tokens of the sequence
	// whose layer-i cache is caches[r] (len(caches) == B). Each row's result equals Layer on that
	// row alone as long as a batched matrix product computes each row as the single-row product
	// does (see engines.Batcher).
	LayerRows(i int, h mlx.Array, caches []Cache) mlx.Array
}

// LayerRows runs block i for B rows of L tokens with a cache each: through m's RowLayer when it
// has one, otherwise row by row with Layer (correct for every model, with no batching gain).
func LayerRows(m Model, i int, h mlx.Array, caches []Cache) mlx.Array {
	if rl, ok := m.(RowLayer); ok {
		return rl.LayerRows(i, h, caches)
	}
	if len(caches) == 1 {
		return m.Layer(i, h, caches[0])
	}
	outs := make([]mlx.Array, len(caches))
	l, hid := h.Dim(1), h.Dim(2)
	for r, c := range caches {
		outs[r] = m.Layer(i, mlx.Slice(h, []int{r, 0, 0}, []int{r + 1, l, hid}), c)
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
	b, n := len(caches), x.Dim(1)
	q, k, v := d.project(l, x, b, n)
	hd := q.Dim(3)
	mode := mlx.MaskNone
	if n > 1 {
		mode = mlx.MaskCausal
	}
	outs := make([]mlx.Array, b)
	for r, c := range caches {
		row := func(a mlx.Array, heads int) mlx.Array {
			return mlx.Slice(a, []int{r, 0, 0, 0}, []int{r + 1, heads, n, hd})
		}
		off := c.Offset()
		qr := d.rope.apply(row(q, d.heads), off)
		kr := d.rope.apply(row(k, d.kvh), off)
		kr, vr := c.Update(kr, row(v, d.kvh))
		outs[r] = mlx.SDPA(qr, kr, vr, d.scale, mode, mlx.Array{})
	}
	o := outs[0]
	if b > 1 {
		o = mlx.Concat(0, outs...)
	}
	return l.o.Forward(mlx.Reshape(mlx.Transpose(o, 0, 2, 1, 3), b, n, -1))
}

// Padded is one layer's keys and values of B sequences decoded together, left-padded so that every
// row writes its next position into the same slot: row r holds its positions in slots
// [Pad[r], N) of Keys and Values [B, kvHeads, capacity, headDim]. The engine builds it, owns it
// and frees it; PaddedLayer writes slot N.
type Padded struct {
	Keys, Values mlx.Array
}

// PaddedStep is what every layer of one padded decode step shares.
type PaddedStep struct {
	// N is the slot the step writes (all rows' next position, after padding).
	N int
	// Offsets is int32 [B]: each row's own position of the token it feeds (its RoPE offset).
	Offsets mlx.Array
	// Mask is bool [B, 1, 1, N+1]: the slots each row may attend to (its own, not the padding).
	Mask mlx.Array
}

// PaddedLayer is implemented by models that can decode B sequences with one attention call over
// a left-padded cache (one kernel sequence per layer whatever B is).
type PaddedLayer interface {
	// LayerPadded runs block i on h [B, 1, hidden] and writes the rows' keys and values into slot
	// st.N of c.
	LayerPadded(i int, h mlx.Array, c *Padded, st PaddedStep) mlx.Array
}

var _ PaddedLayer = (*decoder)(nil)

// LayerPadded implements PaddedLayer with the op order of Layer.
func (d *decoder) LayerPadded(i int, x mlx.Array, c *Padded, st PaddedStep) mlx.Array {
	l := &d.layers[i]
	r := d.attentionPadded(l, mlx.RMSNorm(x, l.inputNorm, d.eps), c, st)
	h := mlx.Add(x, r)
	n := mlx.RMSNorm(h, l.postNorm, d.eps)
	g := l.gate.Forward(n)
	r = l.down.Forward(mlx.SwiGLU(g, l.up.Forward(n)))
	return mlx.Add(h, r)
}

func (d *decoder) attentionPadded(l *decoderLayer, x mlx.Array, c *Padded, st PaddedStep) mlx.Array {
	b := x.Dim(0)
	q, k, v := d.project(l, x, b, 1)
	r := d.rope
	q = mlx.RoPEOffsets(q, r.dims, r.traditional, r.base, r.scale, st.Offsets, r.freqs)
	k = mlx.RoPEOffsets(k, r.dims, r.traditional, r.base, r.scale, st.Offsets, r.freqs)
	ks, vs := c.Keys.Shape(), c.Values.Shape()
	keys := mlx.SliceUpdate(c.Keys, k, []int{0, 0, st.N, 0}, []int{ks[0], ks[1], st.N + 1, ks[3]})
	values := mlx.SliceUpdate(c.Values, v, []int{0, 0, st.N, 0}, []int{vs[0], vs[1], st.N + 1, vs[3]})
	mlx.Detach(keys, values)
	c.Keys.Free()
	c.Values.Free()
	c.Keys, c.Values = keys, values
	kv := mlx.Slice(keys, []int{0, 0, 0, 0}, []int{ks[0], ks[1], st.N + 1, ks[3]})
	vv := mlx.Slice(values, []int{0, 0, 0, 0}, []int{vs[0], vs[1], st.N + 1, vs[3]})
	o := mlx.SDPA(q, kv, vv, d.scale, mlx.MaskArray, st.Mask)
	return l.o.Forward(mlx.Reshape(mlx.Transpose(o, 0, 2, 1, 3), b, 1, -1))
}
