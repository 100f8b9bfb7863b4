// Package model runs transformer checkpoints on MLX: config parsing, weight loading (dense and
// affine-quantized), KV caches and the architectures Hippo supports, registered by name.
//
// A model is executed in three parts so that pipeline stages can run any contiguous layer range:
// Embed (first stage only), Layer i for i in [a, b), and Head (final norm + lm_head, last stage
// only). All methods build lazy MLX graphs and must be called on the MLX thread.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnsupported reports a checkpoint whose architecture Hippo does not implement.
var ErrUnsupported = errors.New("unsupported architecture")

// Quantization is MLX's affine quantization as written by mlx-lm's convert: a default width and
// group size, and optionally per-module overrides keyed by module path (mixed quantization, or a
// GGUF file whose embedding is Q8_0 and the rest 4-bit).
type Quantization struct {
	GroupSize int `json:"group_size"`
	Bits      int `json:"bits"`
	// Modules holds the overrides, e.g. "model.embed_tokens" -> {32, 8}.
	Modules map[string]Quantization `json:"-"`
}

// For returns the quantization of the module at path (e.g. "model.layers.0.mlp.up_proj").
func (q *Quantization) For(path string) Quantization {
	if m, ok := q.Modules[path]; ok {
		return m
	}
	return Quantization{GroupSize: q.GroupSize, Bits: q.Bits}
}

// UnmarshalJSON reads group_size and bits and every object-valued key as a module override.
func (q *Quantization) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*q = Quantization{}
	for k, v := range raw {
		var err error
		switch k {
		case "group_size":
			err = json.Unmarshal(v, &q.GroupSize)
		case "bits":
			err = json.Unmarshal(v, &q.Bits)
		default:
			if len(v) == 0 || v[0] != '{' {
				continue // e.g. "mode": "affine"
			}
			var m Quantization
			if err = json.Unmarshal(v, &m); err == nil {
				if q.Modules == nil {
					q.Modules = map[string]Quantization{}
				}
				q.Modules[k] = m
			}
		}
		if err != nil {
			return fmt.Errorf("quantization %q: %w", k, err)
		}
	}
	return nil
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (q Quantization) MarshalJSON() ([]byte, error) {
	m := map[string]any{"group_size": q.GroupSize, "bits": q.Bits}
	for k, v := range q.Modules {
		m[k] = map[string]int{"group_size": v.GroupSize, "bits": v.Bits}
	}
	return json.Marshal(m)
}

// Config is the subset of a Hugging Face config.json that the supported architectures read.
// Fields not used by an architecture stay zero.
type Config struct {
	ModelType             string         `json:"model_type"`
	Architectures         []string       `json:"architectures"`
	HiddenSize            int            `json:"hidden_size"`
	NumLayers             int            `json:"num_hidden_layers"`
	NumHeads              int            `json:"num_attention_heads"`
	NumKVHeads            int            `json:"num_key_value_heads"`
	HeadDim               int            `json:"head_dim"`
	IntermediateSize      int            `json:"intermediate_size"`
	VocabSize             int            `json:"vocab_size"`
	RMSNormEps            float64        `json:"rms_norm_eps"`
	RopeTheta             float64        `json:"rope_theta"`
	RopeScaling           map[string]any `json:"rope_scaling"`
	RopeTraditional       bool           `json:"rope_traditional"`
	TieWordEmbeddings     *bool          `json:"tie_word_embeddings"`
	MaxPositionEmbeddings int            `json:"max_position_embeddings"`
	AttentionBias         bool           `json:"attention_bias"`
	MLPBias               bool           `json:"mlp_bias"`
	TorchDtype            string         `json:"torch_dtype"`
	Quantization          *Quantization  `json:"quantization"`

	// Gemma 3.
	SlidingWindow        int      `json:"sliding_window"`
	SlidingWindowPattern int      `json:"sliding_window_pattern"`
	LayerTypes           []string `json:"layer_types"`
	RopeLocalBaseFreq    float64  `json:"rope_local_base_freq"`
	QueryPreAttnScalar   float64  `json:"query_pre_attn_scalar"`
	FinalLogitSoftcap    *float64 `json:"final_logit_softcapping"`
	HiddenActivation     string   `json:"hidden_activation"`

	// Raw keeps the whole file so that presets can be written back unchanged.
	Raw map[string]any `json:"-"`
}

// Tied reports whether the lm_head shares the embedding matrix.
func (c *Config) Tied() bool {
	if c.TieWordEmbeddings != nil {
		return *c.TieWordEmbeddings
	}
	return c.ModelType != "qwen3" // mlx-lm's defaults: llama and gemma3 tie, qwen3 must say so
}

// KVHeadDim is the per-head dimension of attention.
func (c *Config) KVHeadDim() int {
	if c.HeadDim > 0 {
		return c.HeadDim
	}
	if c.NumHeads == 0 {
		return 0
	}
	return c.HiddenSize / c.NumHeads
}

// ReadConfig reads and validates dir/config.json. Multimodal Gemma 3 checkpoints keep the language
// model's settings under text_config; those are lifted to the top level.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: read config: %w (is %s a Hugging Face checkpoint directory?)", err, dir)
	}
	return ParseConfig(b, path)
}

// ParseConfig parses config.json bytes; name is used in error messages.
func ParseConfig(b []byte, name string) (*Config, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("model: %s: invalid JSON: %w", name, err)
	}
	merged := raw
	if tc, ok := raw["text_config"].(map[string]any); ok {
		merged = map[string]any{}
		for k, v := range tc {
			merged[k] = v
		}
		for _, k := range []string{"quantization", "quantization_config", "tie_word_embeddings"} {
			if v, ok := raw[k]; ok {
				merged[k] = v
			}
		}
		if mt, _ := merged["model_type"].(string); mt == "" || mt == "gemma3" {
			merged["model_type"] = "gemma3_text"
		}
	}
	if mt, _ := merged["model_type"].(string); configDefaults[mt] != nil {
		configDefaults[mt](merged, raw)
	}
	if _, ok := merged["quantization"]; !ok {
		if q, ok := merged["quantization_config"]; ok {
			merged["quantization"] = q
		}
	}
	mb, _ := json.Marshal(merged)
	var c Config
	if err := json.Unmarshal(mb, &c); err != nil {
		return nil, fmt.Errorf("model: %s: %w", name, err)
	}
	c.Raw = raw
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("model: %s: %w", name, err)
	}
	return &c, nil
}

func (c *Config) validate() error {
	if _, ok := registry[c.ModelType]; !ok {
		return fmt.Errorf("model_type %q (architectures %v): %w; Hippo runs %s",
			c.ModelType, c.Architectures, ErrUnsupported, strings.Join(Architectures(), ", "))
	}
	checks := []struct {
		name string
		v    int
	}{
		{"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumLayers},
		{"num_attention_heads", c.NumHeads}, {"intermediate_size", c.IntermediateSize},
		{"vocab_size", c.VocabSize},
	}
	for _, ch := range checks {
		if ch.v <= 0 {
			return fmt.Errorf("%s must be positive, got %d", ch.name, ch.v)
		}
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.NumHeads%c.NumKVHeads != 0 {
		return fmt.Errorf("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumHeads, c.NumKVHeads)
	}
	if c.HeadDim == 0 && c.HiddenSize%c.NumHeads != 0 {
		return fmt.Errorf("hidden_size %d is not a multiple of num_attention_heads %d and head_dim is not set", c.HiddenSize, c.NumHeads)
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.Quantization != nil {
		for path, q := range c.Quantization.Modules {
			if err := checkQuant(q); err != nil {
				return fmt.Errorf("quantization of %s: %w", path, err)
			}
		}
		if err := checkQuant(*c.Quantization); err != nil {
			return err
		}
	}
	return nil
}

func checkQuant(q Quantization) error {
	if q.Bits != 2 && q.Bits != 3 && q.Bits != 4 && q.Bits != 5 && q.Bits != 6 && q.Bits != 8 {
		return fmt.Errorf("quantization bits %d: MLX affine quantization supports 2, 3, 4, 5, 6 and 8", q.Bits)
	}
	if q.GroupSize != 32 && q.GroupSize != 64 && q.GroupSize != 128 {
		return fmt.Errorf("quantization group_size %d: use 32, 64 or 128", q.GroupSize)
	}
	return nil
}

// builder constructs an architecture from its config and weights.
type builder func(c *Config, w *Weights) (Model, error)

var registry = map[string]builder{}

// configDefaults fill in, before validation, the fields an architecture's config.json may leave
// out, as the reference implementation's defaults do. merged is the (text) model's config, top the
// whole file.
var configDefaults = map[string]func(merged, top map[string]any){}

// register makes an architecture loadable by its config.json model_type.
func register(modelType string, b builder) { registry[modelType] = b }

// Architectures lists the supported model_type values.
func Architectures() []string {
	var names []string
	for k := range registry {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}
