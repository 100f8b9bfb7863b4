// Package synth writes shape-faithful checkpoints with seeded random weights, in the Hugging Face
// layout that mlx-lm and real mlx-community checkpoints use, so that every engine path (loading,
// quantization, all architectures) can be exercised without downloading weights.
package synth

import (
	"fmt"
	"sort"
	"strings"
)

// Preset is a named architecture shape: the config.json fields of a real model.
type Preset struct {
	Name   string
	Arch   string // "qwen3", "llama", "gemma3"
	Config map[string]any
	// Source says which public config the shape reproduces.
	Source string
}

var presets = map[string]Preset{}

func addPreset(p Preset) { presets[p.Name] = p }

// Lookup returns the preset called name.
func Lookup(name string) (Preset, error) {
	p, ok := presets[name]
	if !ok {
		return Preset{}, fmt.Errorf("synth: unknown preset %q: choose one of %s", name, strings.Join(Names(), ", "))
	}
	return p, nil
}

// Names lists the presets.
func Names() []string {
	var out []string
	for k := range presets {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func qwen3(name string, hidden, layers, heads, kv, inter int, tied bool, source string) Preset {
	return Preset{Name: name, Arch: "qwen3", Source: source, Config: map[string]any{
		"architectures": []string{"Qwen3ForCausalLM"}, "model_type": "qwen3",
		"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
		"num_key_value_heads": kv, "head_dim": 128, "intermediate_size": inter,
		"vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
		"max_position_embeddings": 40960, "tie_word_embeddings": tied, "hidden_act": "silu",
		"attention_bias": false, "bos_token_id": 151643, "eos_token_id": 151645,
	}}
}

func init() {
	addPreset(qwen3("qwen3-0.6b", 1024, 28, 16, 8, 3072, true, "Qwen/Qwen3-0.6B config.json"))
	addPreset(qwen3("qwen3-1.7b", 2048, 28, 16, 8, 6144, true, "Qwen/Qwen3-1.7B config.json"))
	addPreset(qwen3("qwen3-4b", 2560, 36, 32, 8, 9728, true, "Qwen/Qwen3-4B config.json"))
	addPreset(qwen3("qwen3-8b", 4096, 36, 32, 8, 12288, false, "Qwen/Qwen3-8B config.json"))

	tiny := qwen3("tiny", 64, 4, 4, 2, 128, false, "Qwen3 layout, test-sized")
	tiny.Config["head_dim"] = 16
	addPreset(tiny)
	// demo: Qwen3-0.6B's layer shapes with 4 layers, so `just demo` is quick on a laptop CPU.
	demo := qwen3("qwen3-demo", 1024, 4, 16, 8, 3072, true, "Qwen/Qwen3-0.6B config.json, 4 of 28 layers")
	addPreset(demo)
	tq := tiny
	tq.Name = "tiny-qwen3"
	addPreset(tq)
	// deep-narrow: Qwen3-4B's depth at a test model's width with a small vocabulary, so that a
	// decode step is ~250 tiny ops and per-op overhead (graph building, dispatch), not bandwidth,
	// decides its speed (bench engine's overhead row).
	deep := qwen3("deep-narrow", 64, 36, 4, 2, 128, false, "Qwen3 layout, 36 layers of width 64, vocabulary 4096")
	deep.Config["head_dim"] = 16
	deep.Config["vocab_size"] = 4096
	addPreset(deep)

	llama := func(name string, hidden, layers, heads, kv, hd, inter int, source string) Preset {
		return Preset{Name: name, Arch: "llama", Source: source, Config: map[string]any{
			"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
			"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
			"num_key_value_heads": kv, "head_dim": hd, "intermediate_size": inter,
			"vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
			"rope_scaling": map[string]any{"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
				"original_max_position_embeddings": 8192, "rope_type": "llama3"},
			"max_position_embeddings": 131072, "tie_word_embeddings": true, "hidden_act": "silu",
			"attention_bias": false, "mlp_bias": false, "bos_token_id": 128000,
			"eos_token_id": []int{128001, 128008, 128009},
		}}
	}
	addPreset(llama("llama-3.2-1b", 2048, 16, 32, 8, 64, 8192, "meta-llama/Llama-3.2-1B-Instruct config.json"))
	addPreset(llama("llama-3.2-3b", 3072, 28, 24, 8, 128, 8192, "meta-llama/Llama-3.2-3B-Instruct config.json"))
	addPreset(llama("tiny-llama", 64, 4, 4, 2, 16, 128, "Llama 3.2 layout, test-sized"))
}
