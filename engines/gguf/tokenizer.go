package gguf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// GGUF token types (llama.cpp's llama_token_type).
const (
	tokenNormal      = 1
	tokenUnknown     = 2
	tokenControl     = 3
	tokenUserDefined = 4
	tokenUnused      = 5
	tokenByte        = 6
)

// gpt2Regex is GPT-2's pre-tokenizer pattern, which the tokenizers library's ByteLevel
// pre-tokenizer applies when use_regex is set.
const gpt2Regex = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`

// preTokenizers maps tokenizer.ggml.pre to the Hugging Face pre-tokenizer that splits text the
// same way as llama.cpp's regex list for that name (llama-vocab.cpp): "smollm" isolates every
// digit (\p{N}) and then applies GPT-2's pattern; "gpt2" applies GPT-2's pattern alone.
var preTokenizers = map[string]any{
	"smollm": map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\p{N}`}, "behavior": "Isolated", "invert": false},
		byteLevel(true),
	}},
	"gpt2": byteLevel(true),
}

func byteLevel(regex bool) map[string]any {
	return map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex}
}

// tokFiles are the tokenizer files of a converted checkpoint.
type tokFiles struct {
	tokenizer, config []byte
	generation        map[string]any
}

// orderedVocab writes a vocabulary in id order, as the tokenizers library does.
type orderedVocab []string

func (v orderedVocab) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for id, tok := range v {
		if id > 0 {
			b.WriteByte(',')
		}
		k, err := marshal(tok)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(id))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshal encodes v without escaping <, > and &, which special tokens are full of.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// tokenizerFiles builds tokenizer.json, tokenizer_config.json and generation_config.json from
// the tokenizer in the GGUF metadata. It handles byte-level BPE vocabularies (model "gpt2") with
// the pre-tokenizers of preTokenizers.
func tokenizerFiles(g *File) (*tokFiles, error) {
	kind, _ := g.String("tokenizer.ggml.model")
	if kind != "gpt2" {
		return nil, fmt.Errorf("%w: tokenizer model %q: Hippo converts byte-level BPE (gpt2) tokenizers", ErrUnsupported, kind)
	}
	preName, ok := g.String("tokenizer.ggml.pre")
	if !ok {
		preName = "gpt2"
	}
	pre, ok := preTokenizers[preName]
	if !ok {
		return nil, fmt.Errorf("%w: pre-tokenizer %q: Hippo knows smollm and gpt2", ErrUnsupported, preName)
	}
	tokens, ok := g.Strings("tokenizer.ggml.tokens")
	if !ok {
		return nil, needErr("tokenizer.ggml.tokens", "a list of strings")
	}
	merges, ok := g.Strings("tokenizer.ggml.merges")
	if !ok {
		return nil, needErr("tokenizer.ggml.merges", "a list of strings")
	}
	types, ok := g.Ints("tokenizer.ggml.token_type")
	if !ok || len(types) != len(tokens) {
		return nil, needErr("tokenizer.ggml.token_type", fmt.Sprintf("a list of %d integers", len(tokens)))
	}
	var added []any
	for id, t := range types {
		switch t {
		case tokenControl, tokenUserDefined:
			// llama.cpp matches both kinds in raw text before BPE; control tokens are special
			// (hidden when decoding with skip_special_tokens).
			added = append(added, map[string]any{
				"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
				"normalized": false, "special": t == tokenControl,
			})
		case tokenNormal, tokenUnknown, tokenUnused, tokenByte:
		default:
			return nil, fmt.Errorf("%w: token %d (%q) has type %d", ErrUnsupported, id, tokens[id], t)
		}
	}
	tokenAt := func(key string) (string, int, bool) {
		id, ok := g.Int(key)
		if !ok || id < 0 || id >= len(tokens) {
			return "", 0, false
		}
		return tokens[id], id, true
	}
	var post any = map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}
	addBOS, _ := g.Bool("tokenizer.ggml.add_bos_token")
	if bos, id, ok := tokenAt("tokenizer.ggml.bos_token_id"); ok && addBOS {
		post = map[string]any{
			"type":   "TemplateProcessing",
			"single": []any{map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair": []any{map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 1}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{bos: map[string]any{"id": bos, "ids": []int{id}, "tokens": []string{bos}}},
		}
	}
	spec := map[string]any{
		"version":        "1.0",
		"truncation":     nil,
		"padding":        nil,
		"added_tokens":   added,
		"normalizer":     nil,
		"pre_tokenizer":  pre,
		"post_processor": post,
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": orderedVocab(tokens), "merges": merges,
		},
	}
	tj, err := marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}

	cfg := map[string]any{
		"tokenizer_class":              "GPT2Tokenizer",
		"add_bos_token":                addBOS,
		"add_prefix_space":             false,
		"clean_up_tokenization_spaces": false,
		"model_max_length":             0,
	}
	if n, ok := g.Int(g.Architecture() + ".context_length"); ok {
		cfg["model_max_length"] = n
	}
	gen := map[string]any{}
	for _, s := range []struct{ key, name string }{
		{"bos_token_id", "bos_token"}, {"eos_token_id", "eos_token"},
		{"unknown_token_id", "unk_token"}, {"padding_token_id", "pad_token"},
	} {
		if tok, id, ok := tokenAt("tokenizer.ggml." + s.key); ok {
			cfg[s.name] = tok
			if s.name == "bos_token" || s.name == "eos_token" || s.name == "pad_token" {
				gen[s.name+"_id"] = id
			}
		}
	}
	if tmpl, ok := g.String("tokenizer.chat_template"); ok {
		cfg["chat_template"] = tmpl
	}
	cj, err := marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("tokenizer_config.json: %w", err)
	}
	return &tokFiles{tokenizer: tj, config: cj, generation: gen}, nil
}
