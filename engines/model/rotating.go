package model

import "github.com/hippo-bench/hippo/engines/mlx"

// RotatingKVCache keeps at most MaxSize positions (plus the tokens of one multi-token update): the
// cache of a sliding-window attention layer. It is mlx-lm's RotatingKVCache, operation for
// operation, because attention sums over keys in storage order: a cache that stored the same keys
// in another order would produce slightly different floats, and greedy decoding would drift from
// mlx-lm's after a few hundred tokens.
//
// Single-token updates overwrite the oldest slot in place, so the stored keys are in rotated
// (not temporal) order once the window is full; attention does not care, as the layer's mask is
// none for one query. Multi-token updates first put the buffer back in temporal order, keep the
// last MaxSize-1 positions and append the new ones, so that each new query sees a full window.
type RotatingKVCache struct {
	keys, values mlx.Array
	offset       int // positions seen so far (the position of the next token)
	idx          int // the next write slot in keys
	maxSize      int
	keep         int // leading positions never evicted (attention sinks); Gemma uses 0
}

var _ Cache = (*RotatingKVCache)(nil)

// NewRotatingKVCache makes a cache that holds the last maxSize positions, never evicting the first
// keep.
func NewRotatingKVCache(maxSize, keep int) *RotatingKVCache {
	return &RotatingKVCache{maxSize: maxSize, keep: keep}
}

// MaxSize is the window the cache keeps.
func (c *RotatingKVCache) MaxSize() int { return c.maxSize }

// Offset implements Cache.
func (c *RotatingKVCache) Offset() int { return c.offset }

// Update implements Cache. The returned arrays are valid until the next Update.
func (c *RotatingKVCache) Update(k, v mlx.Array) (mlx.Array, mlx.Array) {
	if !k.Valid() || !v.Valid() {
		return mlx.Array{}, mlx.Array{} // an earlier op failed; its error is pending
	}
	if k.Dim(2) == 1 {
		return c.updateInPlace(k, v)
	}
	return c.updateConcat(k, v)
}

// temporalOrder puts a in the order positions were written, dropping unused slots.
func (c *RotatingKVCache) temporalOrder(a mlx.Array) mlx.Array {
	n := a.Dim(2)
	switch {
	case c.idx == n:
		return a
	case c.idx < c.offset:
		return concat(axis2(a, 0, c.keep), axis2(a, c.idx, n), axis2(a, c.keep, c.idx))
	default:
		return axis2(a, 0, c.idx)
	}
}

// trim drops n positions after the kept ones and appends extra (when valid).
func (c *RotatingKVCache) trim(n int, a, extra mlx.Array) mlx.Array {
	parts := []mlx.Array{a}
	if n > 0 {
		parts = []mlx.Array{axis2(a, 0, c.keep), axis2(a, n+c.keep, a.Dim(2))}
	}
	if extra.Valid() {
		parts = append(parts, extra)
	}
	return concat(parts...)
}

func (c *RotatingKVCache) updateConcat(k, v mlx.Array) (mlx.Array, mlx.Array) {
	if !c.keys.Valid() {
		// Like mlx-lm, the first update adopts the new keys as the buffer (no copy).
		c.replace(k, v)
	} else {
		keys, values := c.temporalOrder(c.keys), c.temporalOrder(c.values)
		c.idx = keys.Dim(2)
		// Keep maxSize-1 old positions so that every new token sees at least maxSize keys.
		n := c.idx - c.maxSize + 1
		c.replace(c.trim(n, keys, k), c.trim(n, values, v))
	}
	c.offset += k.Dim(2)
	c.idx = c.keys.Dim(2)
	return c.keys, c.values
}

func (c *RotatingKVCache) updateInPlace(k, v mlx.Array) (mlx.Array, mlx.Array) {
	ks, vs := k.Shape(), v.Shape()
	s := ks[2]
	prev := c.offset
	if !c.keys.Valid() || prev >= c.keys.Dim(2) && c.keys.Dim(2) < c.maxSize {
		// Grow by up to cacheStep positions, never beyond the window.
		n := min(cacheStep, c.maxSize-prev)
		newK := mlx.Full(0, k.DType(), ks[0], ks[1], n, ks[3])
		newV := mlx.Full(0, v.DType(), vs[0], vs[1], n, vs[3])
		if c.keys.Valid() {
			newK, newV = mlx.Concat(2, c.keys, newK), mlx.Concat(2, c.values, newV)
		}
		c.replace(newK, newV)
		c.idx = prev
	}
	if n := c.keys.Dim(2) - c.maxSize; n > 0 {
		c.replace(c.trim(n, c.keys, mlx.Array{}), c.trim(n, c.values, mlx.Array{}))
		c.idx = c.maxSize
	}
	if c.idx == c.maxSize {
		c.idx = c.keep // rotate
	}
	c.replace(
		mlx.SliceUpdate(c.keys, k, []int{0, 0, c.idx, 0}, []int{ks[0], ks[1], c.idx + s, ks[3]}),
		mlx.SliceUpdate(c.values, v, []int{0, 0, c.idx, 0}, []int{vs[0], vs[1], c.idx + s, vs[3]}),
	)
	c.offset += s
	c.idx += s
	if c.offset < c.keys.Dim(2) {
		return axis2(c.keys, 0, c.offset), axis2(c.values, 0, c.offset)
	}
	return c.keys, c.values
}

// replace takes ownership of new buffers (detaching them from any open scope) and frees the old
// ones unless they are the same handles.
func (c *RotatingKVCache) replace(k, v mlx.Array) {
	mlx.Detach(k, v)
	if c.keys != k {
		c.keys.Free()
	}
	if c.values != v {
		c.values.Free()
	}
	c.keys, c.values = k, v
}

// Trim implements Cache. Positions can be dropped only while nothing has been evicted (offset below
// the window), as in mlx-lm (is_trimmable); otherwise Trim drops nothing and returns 0, and the
// caller must start over from an untrimmed state.
func (c *RotatingKVCache) Trim(n int) int {
	if c.offset >= c.maxSize {
		return 0
	}
	n = min(n, c.offset)
	c.offset -= n
	c.idx -= n
	return n
}

// Reset implements Cache. It frees the buffers rather than keeping them: mlx-lm starts every
// request with a fresh cache, whose first multi-token update adopts the prompt's keys as its
// buffer, and reusing an old buffer would add a copy to the graph.
func (c *RotatingKVCache) Reset() { c.Free() }

// State implements Cache.
func (c *RotatingKVCache) State() []mlx.Array {
	if !c.keys.Valid() {
		return nil
	}
	return []mlx.Array{c.keys, c.values}
}

// Free implements Cache.
func (c *RotatingKVCache) Free() {
	c.keys.Free()
	c.values.Free()
	c.keys, c.values = mlx.Array{}, mlx.Array{}
	c.offset, c.idx = 0, 0
}

// axis2 is a[:, :, from:to].
func axis2(a mlx.Array, from, to int) mlx.Array {
	s := a.Shape()
	return mlx.Slice(a, []int{0, 0, from, 0}, []int{s[0], s[1], to, s[3]})
}

// concat joins arrays along the sequence axis, leaving out empty ones (mlx-lm concatenates them
// too; an empty piece adds no values, so the result is the same).
func concat(parts ...mlx.Array) mlx.Array {
	var keep []mlx.Array
	for _, p := range parts {
		if p.Valid() && p.Dim(2) > 0 {
			keep = append(keep, p)
		}
	}
	if len(keep) == 1 {
		return keep[0]
	}
	return mlx.Concat(2, keep...)
}
