package synth

// Gemma 3 presets. Google ships Gemma 3 1B as a text model (model_type gemma3_text) and the 4B,
// 12B and 27B as multimodal models (model_type gemma3): their language model's settings sit under
// text_config and, in the mlx-community conversions (mlx-vlm), its tensors under
// "language_model.". The multimodal presets keep the flat text fields here and are nested by
// multimodalConfig when written, so --layers and --set work the same for both. The vision tower
// (SigLIP, about 0.4B parameters) is not synthesized: Hippo and mlx-lm run the text model only.

// Sources of the shapes:
//   - google/gemma-3-1b-it config.json: hidden 1152, 26 layers, 4 heads, 1 KV head, head_dim 256,
//     intermediate 6912, vocab 262144, sliding_window 512, sliding_window_pattern 6,
//     rope_theta 1e6, rope_local_base_freq 1e4, rope_scaling null, query_pre_attn_scalar 256,
//     max_position_embeddings 32768, final_logit_softcapping null.
//   - google/gemma-3-4b-it and google/gemma-3-12b-it config.json text_config: hidden 2560 / 3840,
//     34 / 48 layers, intermediate 10240 / 15360, rope_scaling {linear, factor 8}, sliding_window
//     1024; the fields those files leave out are transformers' Gemma3TextConfig defaults
//     (8 / 16 heads and 4 / 8 KV heads as the full configs of the 12B spell out, head_dim 256,
//     vocab 262208, pattern 6, rope_theta 1e6, rope_local_base_freq 1e4, query_pre_attn_scalar
//     256, max_position_embeddings 131072, final_logit_softcapping null).

// multimodalKeys stay at the top level of a multimodal config.json; everything else is the text
// model's and goes under text_config.
var multimodalKeys = map[string]bool{
	"architectures": true, "model_type": true, "torch_dtype": true, "quantization": true,
	"quantization_config": true, "vision_config": true, "image_token_index": true,
	"boi_token_index": true, "eoi_token_index": true, "mm_tokens_per_image": true,
	"bos_token_id": true, "eos_token_id": true, "pad_token_id": true, "initializer_range": true,
	"transformers_version": true,
}

// multimodalConfig nests a flat gemma3 config as Google's and mlx-community's config.json files
// are laid out. vocab_size is written at both levels: mlx-lm's gemma3 reads the top-level one.
func multimodalConfig(cfg map[string]any) map[string]any {
	top := map[string]any{}
	text := map[string]any{"model_type": "gemma3_text"}
	for k, v := range cfg {
		if multimodalKeys[k] {
			top[k] = v
			continue
		}
		text[k] = v
	}
	if v, ok := cfg["vocab_size"]; ok {
		top["vocab_size"] = v
	}
	top["text_config"] = text
	return top
}

// tensorPrefix is where a layout's text-model tensors live in the checkpoint.
func tensorPrefix(cfg map[string]any) string {
	if cfg["model_type"] == "gemma3" {
		return "language_model."
	}
	return ""
}

func gemma3(name string, hidden, layers, heads, kv, headDim, inter, vocab, window int, multimodal bool, source string) Preset {
	c := map[string]any{
		"architectures": []string{"Gemma3ForCausalLM"}, "model_type": "gemma3_text",
		"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
		"num_key_value_heads": kv, "head_dim": headDim, "intermediate_size": inter,
		"vocab_size": vocab, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
		"rope_local_base_freq": 10000.0, "rope_scaling": nil, "query_pre_attn_scalar": 256,
		"sliding_window": window, "sliding_window_pattern": 6, "max_position_embeddings": 32768,
		"final_logit_softcapping": nil, "attn_logit_softcapping": nil,
		"hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true,
		"attention_bias": false, "bos_token_id": 2, "eos_token_id": []int{1, 106}, "pad_token_id": 0,
	}
	if multimodal {
		c["architectures"] = []string{"Gemma3ForConditionalGeneration"}
		c["model_type"] = "gemma3"
		c["max_position_embeddings"] = 131072
		c["rope_scaling"] = map[string]any{"factor": 8.0, "rope_type": "linear"}
		c["boi_token_index"], c["eoi_token_index"], c["image_token_index"] = 255999, 256000, 262144
		c["mm_tokens_per_image"] = 256
		c["vision_config"] = map[string]any{
			"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
			"num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "image_size": 896,
			"vision_use_head": false,
		}
	}
	return Preset{Name: name, Arch: "gemma3", Config: c, Source: source}
}

func init() {
	addPreset(gemma3("gemma-3-1b", 1152, 26, 4, 1, 256, 6912, 262144, 512, false,
		"google/gemma-3-1b-it config.json (Gemma3ForCausalLM)"))
	addPreset(gemma3("gemma-3-4b", 2560, 34, 8, 4, 256, 10240, 262208, 1024, true,
		"google/gemma-3-4b-it config.json text_config, unset fields from transformers' Gemma3TextConfig defaults; mlx-community multimodal layout without the vision tower"))
	addPreset(gemma3("gemma-3-12b", 3840, 48, 16, 8, 256, 15360, 262208, 1024, true,
		"google/gemma-3-12b-it config.json text_config (as transformers 4.51 writes it out in full); mlx-community multimodal layout without the vision tower"))

	// Test-sized, with 6 layers so that both kinds exist (5 sliding, 1 global) and a window of 8
	// so that short prompts already slide. The tokenizer's 262144 ids need the full vocabulary.
	// query_pre_attn_scalar follows head_dim, as in the released models (256 = head_dim), so that
	// attention is as sharp as theirs rather than nearly uniform.
	tiny := gemma3("tiny-gemma3", 64, 6, 4, 2, 16, 128, 262144, 8, false, "Gemma 3 1B layout, test-sized")
	tiny.Config["query_pre_attn_scalar"] = 16
	addPreset(tiny)
	// hidden 128: sqrt(128) is not a bfloat16 number, so the embedding scale's rounding shows.
	mm := gemma3("tiny-gemma3-mm", 128, 6, 4, 2, 16, 256, 262144, 8, true, "Gemma 3 4B multimodal layout (text part), test-sized")
	mm.Config["query_pre_attn_scalar"] = 16
	mm.Config["vision_config"] = map[string]any{"model_type": "siglip_vision_model"}
	addPreset(mm)
}
