package synth

import (
	"fmt"
	"slices"
	"testing"
)

// TestGemma3Layout checks the mlx-community 4-bit layout of gemma-3-12b without writing it: the
// text model under language_model., quantized matrices as U32 words with bfloat16 scales and
// biases per group of 64, norms left dense, and the embedding table quantized and tied.
func TestGemma3Layout(t *testing.T) {
	c, err := prepare(Options{Preset: "gemma-3-12b", Bits: 4, GroupSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	entries := stored(c.tensors, 4, 64, c.stDT)
	got := map[string]string{}
	for _, e := range entries {
		got[e.info.Name] = fmt.Sprintf("%s %v", e.info.DType, e.info.Shape)
	}
	want := map[string]string{
		"language_model.model.embed_tokens.weight":                       "U32 [262208 480]",
		"language_model.model.embed_tokens.scales":                       "BF16 [262208 60]",
		"language_model.model.layers.0.self_attn.q_proj.weight":          "U32 [4096 480]",
		"language_model.model.layers.0.self_attn.k_proj.biases":          "BF16 [2048 60]",
		"language_model.model.layers.47.mlp.down_proj.weight":            "U32 [3840 1920]",
		"language_model.model.layers.47.mlp.down_proj.scales":            "BF16 [3840 240]",
		"language_model.model.layers.5.self_attn.q_norm.weight":          "BF16 [256]",
		"language_model.model.layers.5.pre_feedforward_layernorm.weight": "BF16 [3840]",
		"language_model.model.norm.weight":                               "BF16 [3840]",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %q; want %q", name, got[name], w)
		}
	}
	// 48 layers x (7 matrices x 3 + 6 norms) + embeddings (3) + final norm; no lm_head (tied).
	if n := len(entries); n != 48*27+4 {
		t.Errorf("%d tensors; want %d", n, 48*27+4)
	}
	if _, ok := got["language_model.lm_head.weight"]; ok {
		t.Error("tied checkpoint has an lm_head")
	}
	if c.file["model_type"] != "gemma3" || c.file["text_config"].(map[string]any)["model_type"] != "gemma3_text" {
		t.Errorf("config.json is not nested as a multimodal Gemma 3: model_type %v", c.file["model_type"])
	}
}

// TestSize pins the bytes hippo synth would write (headers included) for real shapes, computed
// without writing. Where a public file listing exists, the comment gives it.
func TestSize(t *testing.T) {
	cases := []struct {
		name string
		o    Options
		want int64
	}{
		// mlx-community/gemma-3-1b-it-4bit lists model.safetensors at 733 MB; that conversion
		// (mlx-lm 0.21) stored an untied copy of the embeddings as lm_head.
		{"gemma-3-1b 4-bit with lm_head", Options{Preset: "gemma-3-1b", Bits: 4, Set: []string{"tie_word_embeddings=false"}}, 732_577_832},
		// mlx-community/gemma-3-1b-it-bf16 lists model.safetensors at 2.6 GB (same lm_head copy).
		{"gemma-3-1b bf16 with lm_head", Options{Preset: "gemma-3-1b", Set: []string{"tie_word_embeddings=false"}}, 2_603_791_264},
		// OpenPipe/gemma-3-12b-it-text-only lists five shards totalling 23.53 GB.
		{"gemma-3-12b bf16", Options{Preset: "gemma-3-12b"}, 23_532_150_712},
		{"gemma-3-12b 4-bit", Options{Preset: "gemma-3-12b", Bits: 4, GroupSize: 64}, 6_619_663_896},
		{"qwen3-4b bf16", Options{Preset: "qwen3-4b"}, 8_044_982_000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Size(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Size(%s) = %d; want %d", tc.name, got, tc.want)
			}
		})
	}
}

func TestSmallest(t *testing.T) {
	for arch, want := range map[string]string{"qwen3": "qwen3-0.6b", "llama": "llama-3.2-1b", "gemma3": "gemma-3-1b"} {
		p, err := Smallest(arch)
		if err != nil {
			t.Fatal(err)
		}
		if p.Name != want {
			t.Errorf("Smallest(%q) = %s; want %s", arch, p.Name, want)
		}
	}
	if _, err := Smallest("mamba"); err == nil {
		t.Error("Smallest(mamba) found a preset")
	}
	if !slices.Contains(Names(), "tiny-gemma3") {
		t.Error("tiny-gemma3 preset is missing")
	}
}
