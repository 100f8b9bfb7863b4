package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// gemma3 is Gemma 3's text model (mlx-lm's gemma3_text.py, which this file follows op for op):
// embeddings scaled by sqrt(hidden), RMS norms that scale by (1 + weight), four norms per block
// (before and after attention and MLP), RMS-normed queries and keys, a gelu-tanh gated MLP, and
// attention that alternates between sliding-window layers (local RoPE base, bounded rotating KV
// cache) and global layers (global RoPE base with its scaling, growing KV cache).
type gemma3 struct {
	cfg           *Config
	embed         *Embedding
	lmHead        *Linear // nil when tied
	norm          mlx.Array
	layers        []gemmaLayer
	sliding       []bool
	local, global *rope
	embedScale    mlx.Array
	eps           float32
	heads, kvh    int
	headDim       int
	hidden        int
	window        int
	scale         float32
	softcap       float64
}

type gemmaLayer struct {
	q, k, v, o              *Linear
	qNorm, kNorm            mlx.Array
	inputNorm, postAttnNorm mlx.Array
	preFFNorm, postFFNorm   mlx.Array
	gate, up, down          *Linear
}

var _ Model = (*gemma3)(nil)

func init() {
	register("gemma3_text", func(c *Config, w *Weights) (Model, error) { return newGemma3(c, w) })
	configDefaults["gemma3_text"] = gemma3Defaults
}

// gemma3TextDefaults are mlx-lm's gemma3_text.ModelArgs defaults (those of Gemma 3 1B), used for
// the fields a config.json leaves out. Google's multimodal configs state little more than the
// layer shapes, so these are load-bearing.
var gemma3TextDefaults = map[string]any{
	"hidden_size": 1152.0, "num_hidden_layers": 26.0, "intermediate_size": 6912.0,
	"num_attention_heads": 4.0, "head_dim": 256.0, "rms_norm_eps": 1e-6, "vocab_size": 262144.0,
	"num_key_value_heads": 1.0, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
	"query_pre_attn_scalar": 256.0, "sliding_window": 512.0, "max_position_embeddings": 32768.0,
}

// gemma3Defaults fills in a gemma3_text config the way mlx-lm reads it. For a multimodal
// checkpoint (top holds text_config), mlx-lm's gemma3.ModelArgs first overrides the text
// vocab_size with the top-level one (default 262208) and defaults the head counts to 8 and 4.
func gemma3Defaults(merged, top map[string]any) {
	setDefault := func(k string, v any) {
		if merged[k] == nil {
			merged[k] = v
		}
	}
	if _, ok := top["text_config"].(map[string]any); ok {
		if v, ok := top["vocab_size"]; ok && v != nil {
			merged["vocab_size"] = v
		} else {
			merged["vocab_size"] = 262208.0
		}
		setDefault("num_attention_heads", 8.0)
		setDefault("num_key_value_heads", 4.0)
	}
	for k, v := range gemma3TextDefaults {
		setDefault(k, v)
	}
}

// defaultSlidingWindowPattern is mlx-lm's: five local layers, then one global.
const defaultSlidingWindowPattern = 6

// slidingLayers says which layers of a Gemma 3 config use sliding-window attention: from
// layer_types when the config has them, else every layer but each sliding_window_pattern-th
// (mlx-lm's rule; newer transformers configs spell the pattern _sliding_window_pattern).
func (c *Config) slidingLayers() ([]bool, error) {
	out := make([]bool, c.NumLayers)
	pattern := c.SlidingWindowPattern
	if pattern == 0 {
		pattern = int(rawNumber(c.Raw, "_sliding_window_pattern"))
	}
	if len(c.LayerTypes) > 0 {
		if len(c.LayerTypes) != c.NumLayers {
			return nil, fmt.Errorf("layer_types has %d entries for %d layers", len(c.LayerTypes), c.NumLayers)
		}
		for i, t := range c.LayerTypes {
			switch t {
			case "sliding_attention":
				out[i] = true
			case "full_attention":
			default:
				return nil, fmt.Errorf("layer_types[%d] is %q: Gemma 3 has sliding_attention and full_attention", i, t)
			}
			// mlx-lm reads only the pattern: refuse a config whose two descriptions disagree.
			if pattern > 0 && out[i] != ((i+1)%pattern != 0) {
				return nil, fmt.Errorf("layer_types[%d] is %q but sliding_window_pattern %d says otherwise", i, t, pattern)
			}
		}
		return out, nil
	}
	if pattern == 0 {
		pattern = defaultSlidingWindowPattern
	}
	if pattern < 0 {
		return nil, fmt.Errorf("sliding_window_pattern %d must be positive", pattern)
	}
	for i := range out {
		out[i] = (i+1)%pattern != 0
	}
	return out, nil
}

// LayerWindow is the attention window of layer i in positions: the sliding window for Gemma 3's
// local layers, 0 (the whole context) for every other layer and architecture.
func (c *Config) LayerWindow(i int) int {
	if c.ModelType != "gemma3_text" || c.SlidingWindow <= 0 {
		return 0
	}
	s, err := c.slidingLayers()
	if err != nil || i < 0 || i >= len(s) || !s[i] {
		return 0
	}
	return c.SlidingWindow
}

// rawNumber reads a numeric field of the text model's config (text_config for multimodal files).
func rawNumber(raw map[string]any, key string) float64 {
	if tc, ok := raw["text_config"].(map[string]any); ok {
		raw = tc
	}
	v, _ := raw[key].(float64)
	return v
}

func newGemma3(c *Config, w *Weights) (*gemma3, error) {
	hd := c.KVHeadDim()
	sliding, err := c.slidingLayers()
	if err != nil {
		return nil, fmt.Errorf("model: gemma3: %w", err)
	}
	for _, s := range sliding {
		if s && c.SlidingWindow <= 0 {
			return nil, errors.New("model: gemma3: sliding_window must be positive when layers use sliding-window attention")
		}
	}
	if c.QueryPreAttnScalar <= 0 {
		return nil, fmt.Errorf("model: gemma3: query_pre_attn_scalar %v must be positive", c.QueryPreAttnScalar)
	}
	g := &gemma3{
		cfg: c, sliding: sliding, eps: float32(c.RMSNormEps), heads: c.NumHeads, kvh: c.NumKVHeads,
		headDim: hd, hidden: c.HiddenSize, window: c.SlidingWindow,
		scale: float32(math.Pow(c.QueryPreAttnScalar, -0.5)),
	}
	if c.FinalLogitSoftcap != nil {
		g.softcap = *c.FinalLogitSoftcap
	}
	// Gemma's RoPE is never traditional; local layers have no scaling.
	lc, gc := *c, *c
	lc.RopeScaling, lc.RopeTraditional, gc.RopeTraditional = nil, false, false
	if g.local, err = newRope(&lc, w, hd, c.RopeLocalBaseFreq); err != nil {
		return nil, err
	}
	if g.global, err = newRope(&gc, w, hd, c.RopeTheta); err != nil {
		return nil, err
	}
	if g.embed, err = w.Embedding("model.embed_tokens", c.VocabSize, c.HiddenSize); err != nil {
		return nil, err
	}
	// As mlx-lm's sanitize: the head is tied exactly when the checkpoint has no lm_head.
	if w.Has("lm_head.weight") {
		if g.lmHead, err = w.Linear("lm_head", c.VocabSize, c.HiddenSize, false); err != nil {
			return nil, err
		}
	}
	if g.norm, err = w.gemmaNorm("model.norm.weight", c.HiddenSize); err != nil {
		return nil, err
	}
	// sqrt(hidden) is rounded to bfloat16 first, then cast to the compute dtype, as mlx-lm does.
	s := mlx.NewScope()
	g.embedScale = mlx.AsType(mlx.Scalar(math.Sqrt(float64(c.HiddenSize)), mlx.BFloat16), w.compute)
	s.Keep(g.embedScale)
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("model: gemma3: %w", err)
	}
	w.owned = append(w.owned, g.embedScale)
	if err := mlx.Eval(g.embedScale); err != nil {
		return nil, err
	}
	g.layers = make([]gemmaLayer, c.NumLayers)
	for i := range g.layers {
		if err := g.loadLayer(w, i); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// gemmaNorm loads a Gemma RMS norm weight and returns 1 + weight in the compute dtype, the scale
// mlx-lm passes to rms_norm (computed once here rather than on every call; the values are the
// same).
func (w *Weights) gemmaNorm(name string, n int) (mlx.Array, error) {
	a, err := w.Tensor(name, n)
	if err != nil {
		return mlx.Array{}, err
	}
	s := mlx.NewScope()
	r := mlx.AddScalar(a, 1)
	s.Keep(r)
	if err := s.Close(); err != nil {
		return mlx.Array{}, fmt.Errorf("model: %s: %w", name, err)
	}
	w.owned = append(w.owned, r)
	if err := mlx.Eval(r); err != nil {
		return mlx.Array{}, fmt.Errorf("model: %s: %w", name, err)
	}
	return r, nil
}

func (g *gemma3) loadLayer(w *Weights, i int) error {
	c := g.cfg
	p := fmt.Sprintf("model.layers.%d.", i)
	l := &g.layers[i]
	var err error
	lin := func(name string, out, in int) *Linear {
		if err != nil {
			return nil
		}
		var r *Linear
		r, err = w.Linear(p+name, out, in, false)
		return r
	}
	norm := func(name string, n int) mlx.Array {
		if err != nil {
			return mlx.Array{}
		}
		var a mlx.Array
		a, err = w.gemmaNorm(p+name, n)
		return a
	}
	l.q = lin("self_attn.q_proj", g.heads*g.headDim, g.hidden)
	l.k = lin("self_attn.k_proj", g.kvh*g.headDim, g.hidden)
	l.v = lin("self_attn.v_proj", g.kvh*g.headDim, g.hidden)
	l.o = lin("self_attn.o_proj", g.hidden, g.heads*g.headDim)
	l.qNorm = norm("self_attn.q_norm.weight", g.headDim)
	l.kNorm = norm("self_attn.k_norm.weight", g.headDim)
	l.gate = lin("mlp.gate_proj", c.IntermediateSize, g.hidden)
	l.up = lin("mlp.up_proj", c.IntermediateSize, g.hidden)
	l.down = lin("mlp.down_proj", g.hidden, c.IntermediateSize)
	l.inputNorm = norm("input_layernorm.weight", g.hidden)
	l.postAttnNorm = norm("post_attention_layernorm.weight", g.hidden)
	l.preFFNorm = norm("pre_feedforward_layernorm.weight", g.hidden)
	l.postFFNorm = norm("post_feedforward_layernorm.weight", g.hidden)
	return err
}

func (g *gemma3) Config() *Config { return g.cfg }

// NewCache gives sliding-window layers a rotating cache bounded by the window (mlx-lm's
// RotatingKVCache(max_size=sliding_window), keep 0) and global layers a growing one.
func (g *gemma3) NewCache(i int) Cache {
	if g.sliding[i] {
		return NewRotatingKVCache(g.window, 0)
	}
	return &KVCache{}
}

func (g *gemma3) Embed(ids mlx.Array) mlx.Array {
	return mlx.Mul(g.embed.Forward(ids), g.embedScale)
}

func (g *gemma3) Head(h mlx.Array) mlx.Array {
	h = mlx.RMSNorm(h, g.norm, g.eps)
	var logits mlx.Array
	if g.lmHead != nil {
		logits = g.lmHead.Forward(h)
	} else {
		logits = g.embed.AsLinear(h)
	}
	if g.softcap > 0 {
		// Gemma 2 style soft-capping, as transformers applies it when the config sets it. mlx-lm's
		// gemma3_text ignores the field; every released Gemma 3 config has it null.
		logits = mlx.MulScalar(mlx.Tanh(mlx.Div(logits, mlx.Scalar(g.softcap, logits.DType()))), g.softcap)
	}
	return logits
}

func (g *gemma3) Layer(i int, x mlx.Array, c Cache) mlx.Array {
	l := &g.layers[i]
	r := g.attention(i, l, mlx.RMSNorm(x, l.inputNorm, g.eps), c)
	h := mlx.ClipResidual(x, mlx.RMSNorm(r, l.postAttnNorm, g.eps))
	n := mlx.RMSNorm(h, l.preFFNorm, g.eps)
	r = l.down.Forward(mlx.Mul(mlx.GeluApprox(l.gate.Forward(n)), l.up.Forward(n)))
	return mlx.ClipResidual(h, mlx.RMSNorm(r, l.postFFNorm, g.eps))
}

func (g *gemma3) attention(i int, l *gemmaLayer, x mlx.Array, c Cache) mlx.Array {
	s := x.Shape()
	b, n := s[0], s[1]
	q := mlx.Transpose(mlx.Reshape(l.q.Forward(x), b, n, g.heads, -1), 0, 2, 1, 3)
	k := mlx.Transpose(mlx.Reshape(l.k.Forward(x), b, n, g.kvh, -1), 0, 2, 1, 3)
	v := mlx.Transpose(mlx.Reshape(l.v.Forward(x), b, n, g.kvh, -1), 0, 2, 1, 3)
	q = mlx.RMSNorm(q, l.qNorm, g.eps)
	k = mlx.RMSNorm(k, l.kNorm, g.eps)
	off := c.Offset()
	r := g.global
	if g.sliding[i] {
		r = g.local
	}
	q = r.apply(q, off)
	k = r.apply(k, off)
	// The mask depends on the cache before this update, as in mlx-lm (which builds it once per
	// forward from the first local and first global layer's cache; all of a kind are alike).
	mode, mask := g.mask(g.sliding[i], n, off)
	k, v = c.Update(k, v)
	o := mlx.SDPA(q, k, v, g.scale, mode, mask)
	return l.o.Forward(mlx.Reshape(mlx.Transpose(o, 0, 2, 1, 3), b, n, -1))
}

// mask reproduces mlx-lm's masks: none for one query; causal for global layers; for local layers,
// RotatingKVCache.make_mask: causal while the keys fit in the window, else an explicit boolean
// window mask over the cache's min(window-1, offset) old keys and the n new ones.
func (g *gemma3) mask(sliding bool, n, offset int) (string, mlx.Array) {
	if n == 1 {
		return mlx.MaskNone, mlx.Array{}
	}
	if !sliding {
		return mlx.MaskCausal, mlx.Array{}
	}
	off := min(g.window-1, offset)
	if off+n <= g.window {
		return mlx.MaskCausal, mlx.Array{}
	}
	return mlx.MaskArray, windowMask(n, off, g.window)
}

// windowMask is mlx-lm's create_causal_mask(n, offset, window_size): a boolean [n, offset+n]
// array, true where query offset+i may attend to key j (j <= offset+i < j+window).
func windowMask(n, offset, window int) mlx.Array {
	rinds := mlx.Arange(0, float64(offset+n), 1, mlx.Int32)
	linds := rinds
	if offset > 0 {
		linds = mlx.Arange(float64(offset), float64(offset+n), 1, mlx.Int32)
	}
	linds = mlx.Reshape(linds, n, 1)
	rinds = mlx.Reshape(rinds, 1, offset+n)
	m := mlx.GreaterEqual(linds, rinds)
	return mlx.LogicalAnd(m, mlx.Less(linds, mlx.Add(rinds, mlx.Scalar(float64(window), mlx.Int32))))
}
