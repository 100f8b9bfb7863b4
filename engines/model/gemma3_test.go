package model

import (
	"slices"
	"strings"
	"testing"
)

// TestGemma3Config reads Gemma 3 configs as mlx-lm does: Google's multimodal files state little
// more than the layer shapes, and everything else comes from the defaults.
func TestGemma3Config(t *testing.T) {
	cases := []struct {
		name                  string
		json                  string
		heads, kv, vocab, win int
		globals               []int // layers with full attention
		err                   string
	}{
		{
			name: "google/gemma-3-4b-it as released (text_config with shapes only)",
			json: `{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
				"text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
				"num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
				"torch_dtype": "bfloat16", "vision_config": {"model_type": "siglip_vision_model"}}`,
			heads: 8, kv: 4, vocab: 262208, win: 1024, globals: []int{5, 11, 17, 23, 29},
		},
		{
			name: "top-level vocab_size wins over text_config's",
			json: `{"model_type": "gemma3", "vocab_size": 1000, "text_config": {"hidden_size": 64, "intermediate_size": 128,
				"num_hidden_layers": 6, "vocab_size": 5, "head_dim": 16}}`,
			heads: 8, kv: 4, vocab: 1000, win: 512, globals: []int{5},
		},
		{
			name:  "gemma3_text with mlx-lm's defaults",
			json:  `{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 13}`,
			heads: 4, kv: 1, vocab: 262144, win: 512, globals: []int{5, 11},
		},
		{
			name: "transformers' _sliding_window_pattern",
			json: `{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
				"_sliding_window_pattern": 4, "sliding_window": 16}`,
			heads: 4, kv: 1, vocab: 262144, win: 16, globals: []int{3, 7},
		},
		{
			name: "layer_types",
			json: `{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
				"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}`,
			heads: 4, kv: 1, vocab: 262144, win: 512, globals: []int{1},
		},
		{
			name: "layer_types contradicting the pattern",
			json: `{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
				"sliding_window_pattern": 2, "layer_types": ["full_attention", "sliding_attention"]}`,
			err: "sliding_window_pattern 2 says otherwise",
		},
		{
			name: "layer_types of the wrong length",
			json: `{"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
				"layer_types": ["full_attention"]}`,
			err: "layer_types has 1 entries for 2 layers",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json), "config.json")
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.slidingLayers()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("slidingLayers() error = %v; want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ModelType != "gemma3_text" || c.NumHeads != tc.heads || c.NumKVHeads != tc.kv || c.VocabSize != tc.vocab || c.KVHeadDim() == 0 {
				t.Errorf("parsed %s: heads %d, kv %d, vocab %d, head_dim %d; want gemma3_text: %d, %d, %d",
					c.ModelType, c.NumHeads, c.NumKVHeads, c.VocabSize, c.KVHeadDim(), tc.heads, tc.kv, tc.vocab)
			}
			if c.QueryPreAttnScalar != 256 || c.RopeTheta != 1e6 || c.RopeLocalBaseFreq != 1e4 {
				t.Errorf("query_pre_attn_scalar %v, rope_theta %v, rope_local_base_freq %v; want mlx-lm's defaults 256, 1e6, 1e4",
					c.QueryPreAttnScalar, c.RopeTheta, c.RopeLocalBaseFreq)
			}
			var globals []int
			for i := 0; i < c.NumLayers; i++ {
				switch w := c.LayerWindow(i); w {
				case 0:
					globals = append(globals, i)
				case tc.win:
				default:
					t.Errorf("LayerWindow(%d) = %d; want 0 or %d", i, w, tc.win)
				}
			}
			if !slices.Equal(globals, tc.globals) {
				t.Errorf("global layers = %v; want %v", globals, tc.globals)
			}
		})
	}
}

// TestLayerWindowOtherArchitectures: only Gemma 3 slides; a qwen3 config's sliding_window (which
// its use_sliding_window leaves off) changes nothing.
func TestLayerWindowOtherArchitectures(t *testing.T) {
	c, err := ParseConfig([]byte(`{"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
		"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10, "rope_theta": 1e6,
		"sliding_window": 4096, "use_sliding_window": false}`), "config.json")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if w := c.LayerWindow(i); w != 0 {
			t.Errorf("qwen3 LayerWindow(%d) = %d; want 0", i, w)
		}
	}
}
