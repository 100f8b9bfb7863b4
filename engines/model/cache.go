package model

import "github.com/hippo-bench/hippo/engines/mlx"

// Cache holds one layer's keys and values. Implementations own their arrays; Free releases them.
type Cache interface {
	// Update appends keys and values [B, kvHeads, L, dim] and returns the keys and values that
	// attention should use (views that stay valid until the next Update).
	Update(k, v mlx.Array) (mlx.Array, mlx.Array)
	// Offset is the number of positions stored so far (the position of the next token).
	Offset() int
	// Trim drops the last n positions (speculative decoding rejects drafted tokens) and returns
	// how many were dropped.
	Trim(n int) int
	// Reset empties the cache for a new request, keeping its buffers.
	Reset()
	// State lists the arrays to evaluate so that the cache is materialised.
	State() []mlx.Array
	Free()
}

// cacheStep is the allocation granularity of KVCache, in positions (mlx-lm uses the same).
const cacheStep = 256

// KVCache is a growing cache preallocated in chunks of cacheStep positions.
type KVCache struct {
	keys, values mlx.Array
	offset       int
}

var _ Cache = (*KVCache)(nil)

// Offset implements Cache.
func (c *KVCache) Offset() int { return c.offset }

// Update implements Cache.
func (c *KVCache) Update(k, v mlx.Array) (mlx.Array, mlx.Array) {
	prev := c.offset
	ks, vs := k.Shape(), v.Shape()
	n := ks[2]
	if !c.keys.Valid() || prev+n > c.keys.Dim(2) {
		steps := (cacheStep + n - 1) / cacheStep
		newK := mlx.Full(0, k.DType(), ks[0], ks[1], steps*cacheStep, ks[3])
		newV := mlx.Full(0, v.DType(), vs[0], vs[1], steps*cacheStep, vs[3])
		if c.keys.Valid() {
			oldK, oldV := c.keys, c.values
			if prev%cacheStep != 0 {
				oldK = mlx.Slice(oldK, []int{0, 0, 0, 0}, []int{ks[0], ks[1], prev, ks[3]})
				oldV = mlx.Slice(oldV, []int{0, 0, 0, 0}, []int{vs[0], vs[1], prev, vs[3]})
			}
			newK = mlx.Concat(2, oldK, newK)
			newV = mlx.Concat(2, oldV, newV)
		}
		c.replace(newK, newV)
	}
	c.offset += n
	c.replace(
		mlx.SliceUpdate(c.keys, k, []int{0, 0, prev, 0}, []int{ks[0], ks[1], c.offset, ks[3]}),
		mlx.SliceUpdate(c.values, v, []int{0, 0, prev, 0}, []int{vs[0], vs[1], c.offset, vs[3]}),
	)
	if c.offset == c.keys.Dim(2) {
		return c.keys, c.values
	}
	return mlx.Slice(c.keys, []int{0, 0, 0, 0}, []int{ks[0], ks[1], c.offset, ks[3]}),
		mlx.Slice(c.values, []int{0, 0, 0, 0}, []int{vs[0], vs[1], c.offset, vs[3]})
}

// replace takes ownership of new buffers (detaching them from any open scope) and frees the old.
func (c *KVCache) replace(k, v mlx.Array) {
	mlx.Detach(k, v)
	c.keys.Free()
	c.values.Free()
	c.keys, c.values = k, v
}

// Trim implements Cache.
func (c *KVCache) Trim(n int) int {
	n = min(n, c.offset)
	c.offset -= n
	return n
}

// Reset implements Cache.
func (c *KVCache) Reset() { c.offset = 0 }

// State implements Cache.
func (c *KVCache) State() []mlx.Array {
	if !c.keys.Valid() {
		return nil
	}
	return []mlx.Array{c.keys, c.values}
}

// Free implements Cache.
func (c *KVCache) Free() {
	c.keys.Free()
	c.values.Free()
	c.keys, c.values = mlx.Array{}, mlx.Array{}
	c.offset = 0
}
