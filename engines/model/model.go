package model

import (
	"fmt"
	"math"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Model is a decoder-only transformer split into the parts a pipeline stage needs. All methods
// build lazy graphs on the MLX thread; returned arrays belong to the caller's open scope.
type Model interface {
	// Config is the parsed config.json.
	Config() *Config
	// Embed maps token ids [B, L] (int32) to hidden states [B, L, hidden].
	Embed(ids mlx.Array) mlx.Array
	// Layer runs transformer block i on h [B, L, hidden] with that layer's cache; the cache's
	// offset is the position of h's first token.
	Layer(i int, h mlx.Array, c Cache) mlx.Array
	// Head applies the final norm and lm_head: [B, L, hidden] -> logits [B, L, vocab].
	Head(h mlx.Array) mlx.Array
	// NewCache makes an empty cache for layer i.
	NewCache(i int) Cache
}

// Range is a contiguous half-open layer range [From, To).
type Range struct{ From, To int }

// Forward runs tokens through layers r with caches (indexed by absolute layer number). Embedding
// runs when r starts at layer 0 and the head when r ends at the last layer; otherwise x is taken
// as (and the result is) a hidden state.
func Forward(m Model, x mlx.Array, caches []Cache, r Range) mlx.Array {
	n := m.Config().NumLayers
	h := x
	if r.From == 0 {
		h = m.Embed(x)
	}
	for i := r.From; i < r.To; i++ {
		h = m.Layer(i, h, caches[i])
	}
	if r.To == n {
		h = m.Head(h)
	}
	return h
}

// NewCaches makes one cache per layer.
func NewCaches(m Model) []Cache {
	cs := make([]Cache, m.Config().NumLayers)
	for i := range cs {
		cs[i] = m.NewCache(i)
	}
	return cs
}

// Load reads the checkpoint in dir and builds its model in the compute dtype. The caller frees
// it with Close. Must run on the MLX thread.
func Load(dir string, compute mlx.DType) (*Loaded, error) { return LoadRange(dir, compute, Range{}) }

// LoadRange is Load for a pipeline stage: only layers r are loaded, the embedding only when r
// starts at layer 0 (or the last stage needs it as a tied lm_head), the final norm and lm_head
// only when r ends at the last layer. The zero Range means every layer.
func LoadRange(dir string, compute mlx.DType, r Range) (*Loaded, error) {
	c, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if r == (Range{}) {
		r = Range{0, c.NumLayers}
	}
	if r.From < 0 || r.To > c.NumLayers || r.From >= r.To {
		return nil, fmt.Errorf("model: layer range [%d, %d) is not inside the model's %d layers", r.From, r.To, c.NumLayers)
	}
	w, err := openWeights(dir, c, compute)
	if err != nil {
		return nil, err
	}
	w.r = r
	w.layers = c.NumLayers
	w.tied = c.Tied()
	m, err := registry[c.ModelType](c, w)
	if err != nil {
		w.Free()
		return nil, err
	}
	vm, err := ReadVocabMap(dir, c.VocabSize)
	if err == nil && vm != nil {
		m, err = mapVocab(m, vm, w)
	}
	if err != nil {
		w.Free()
		return nil, err
	}
	if extra := w.Unused(); len(extra) > 0 {
		w.Free()
		return nil, fmt.Errorf("model: %s: %d tensors are not used by %s (first: %q): %w", dir, len(extra), c.ModelType, extra[0], ErrCheckpoint)
	}
	return &Loaded{Model: m, Dir: dir, Compute: compute, Range: r, weights: w}, nil
}

// Loaded is a model with the weights it owns.
type Loaded struct {
	Model
	Dir     string
	Compute mlx.DType
	// Range is the layers this process holds.
	Range   Range
	weights *Weights
}

// WeightBytes is the memory the loaded weights take in the compute dtype.
func (l *Loaded) WeightBytes() int64 { return l.weights.Bytes() }

// Close frees the weights.
func (l *Loaded) Close() { l.weights.Free() }

// rope describes how an architecture rotates queries and keys.
type rope struct {
	dims        int
	traditional bool
	base, scale float32
	freqs       mlx.Array // Llama 3 scaled periods; invalid for plain RoPE
}

func (r *rope) apply(x mlx.Array, offset int) mlx.Array {
	return mlx.RoPE(x, r.dims, r.traditional, r.base, r.scale, offset, r.freqs)
}

// newRope builds the RoPE of a config. Llama 3 periods are computed with the same MLX ops, in the
// same order, as mlx-lm's Llama3RoPE, so that both engines rotate by bit-identical angles.
func newRope(c *Config, w *Weights, dims int, base float64) (*rope, error) {
	r := &rope{dims: dims, traditional: c.RopeTraditional, base: float32(base), scale: 1}
	if c.RopeScaling == nil {
		return r, nil
	}
	typ, _ := c.RopeScaling["rope_type"].(string)
	if t, ok := c.RopeScaling["type"].(string); ok {
		typ = t
	}
	num := func(k string, def float64) float64 {
		if v, ok := c.RopeScaling[k].(float64); ok {
			return v
		}
		return def
	}
	switch typ {
	case "", "default":
		return r, nil
	case "linear":
		r.scale = float32(1 / num("factor", 1))
		return r, nil
	case "llama3":
	default:
		return nil, fmt.Errorf("model: rope_scaling type %q is not supported (llama3, linear and default are)", typ)
	}
	factor := num("factor", 1)
	low := num("low_freq_factor", 1)
	high := num("high_freq_factor", 4)
	old := num("original_max_position_embeddings", 8192)
	f32 := func(v float64) mlx.Array { return mlx.Scalar(v, mlx.Float32) }
	s := mlx.NewScope()
	exps := mlx.Div(mlx.Arange(0, float64(dims), 2, mlx.Int32), f32(float64(dims)))
	freqs := mlx.Power(f32(base), exps)
	wave := mlx.Mul(f32(2*math.Pi), freqs)
	freqs = mlx.Where(mlx.Greater(wave, f32(old/low)), mlx.Mul(freqs, f32(factor)), freqs)
	medium := mlx.LogicalAnd(mlx.Greater(wave, f32(old/high)), mlx.Less(wave, f32(old/low)))
	smooth := mlx.Div(mlx.Sub(mlx.Div(f32(old), wave), f32(low)), f32(high-low))
	smoothFreqs := mlx.Div(freqs, mlx.Add(mlx.Div(mlx.Sub(f32(1), smooth), f32(factor)), smooth))
	r.freqs = mlx.Where(medium, smoothFreqs, freqs)
	s.Keep(r.freqs)
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("model: llama3 rope: %w", err)
	}
	if err := mlx.Eval(r.freqs); err != nil {
		return nil, err
	}
	w.owned = append(w.owned, r.freqs)
	return r, nil
}
