package synth

import (
	"fmt"
	"sort"
	"strings"
)

// DFlash draft presets live apart from the decoder presets: a draft is not a model of its own (no
// embedding, no lm_head) and cannot be run, sized or planned like one. WriteDFlash writes them.
var dflashPresets = map[string]Preset{}

// LookupDFlash returns the DFlash draft preset called name.
func LookupDFlash(name string) (Preset, error) {
	p, ok := dflashPresets[name]
	if !ok {
		return Preset{}, fmt.Errorf("synth: unknown dflash preset %q: choose one of %s", name, strings.Join(DFlashNames(), ", "))
	}
	return p, nil
}

// DFlashNames lists the DFlash draft presets.
func DFlashNames() []string {
	var out []string
	for k := range dflashPresets {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// dflash is a z-lab DFlash draft config for a Qwen3 target: a Qwen3 decoder config (without
// embedding or head) plus block_size, num_target_layers and dflash_config, laid out as z-lab's
// checkpoints are (see engines/model/dflash.go for the sources). auto_map is left out: it points at
// z-lab's dflash.py, which synthetic checkpoints do not ship.
func dflash(name string, hidden, layers, heads, kv, headDim, inter, block, targetLayers int, taps []int, source string) Preset {
	types := make([]string, layers)
	for i := range types {
		types[i] = "full_attention"
	}
	return Preset{Name: name, Arch: "dflash", Source: source, Config: map[string]any{
		"architectures": []string{"DFlashDraftModel"}, "model_type": "qwen3",
		"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
		"num_key_value_heads": kv, "head_dim": headDim, "intermediate_size": inter,
		"vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": nil,
		"max_position_embeddings": 40960, "tie_word_embeddings": false, "hidden_act": "silu",
		"attention_bias": false, "attention_dropout": 0.0, "layer_types": types,
		"use_sliding_window": false, "sliding_window": nil, "bos_token_id": 151643, "eos_token_id": 151645,
		"block_size": block, "num_target_layers": targetLayers,
		// 151669 is the <|MASK|> token z-lab's README adds to the Qwen3 tokenizer.
		"dflash_config": map[string]any{"mask_token_id": 151669, "target_layer_ids": taps},
	}}
}

func init() {
	for _, p := range []Preset{
		// Shape checked by the parameter count (537,427,200) and by the taps z-lab's
		// build_target_layer_ids gives for 36 target layers and 5 draft layers.
		dflash("dflash-qwen3-4b-b16", 2560, 5, 32, 8, 128, 9728, 16, 36, []int{1, 9, 17, 25, 33},
			"z-lab/Qwen3-4B-DFlash-b16 (target Qwen/Qwen3-4B)"),
		// Drafts for tiny-qwen3 (hidden 64, head_dim 16, 4 layers). Block 8, so that K = 8 exercises
		// the B-1 cap.
		dflash("dflash-tiny", 64, 2, 4, 2, 16, 128, 8, 4, []int{1, 2}, "DFlash layout for tiny-qwen3, test-sized"),
	} {
		dflashPresets[p.Name] = p
	}
}
