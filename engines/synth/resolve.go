package synth

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Prefix marks a model name that refers to a preset rather than a directory: "synth:tiny-qwen3".
const Prefix = "synth:"

// TokenizerFor names the tokenizer family (a folder under .cache/tokenizers) of an architecture.
func TokenizerFor(arch string) string {
	switch arch {
	case "llama":
		return "llama3"
	case "gemma3":
		return "gemma3"
	}
	return "qwen3"
}

// Resolve turns a model name into a checkpoint directory. A "synth:PRESET" name maps to
// modelsDir/PRESET, which is synthesized (seed 0, bf16, the preset's real tokenizer from
// tokenizersDir) the first time it is asked for. A real model's short name (RealModels, e.g.
// "smollm2-135m") or a path to a .gguf file is converted from GGUF into an MLX checkpoint under
// modelsDir the first time it is asked for (see package gguf). Anything else is returned
// unchanged.
func Resolve(ctx context.Context, name, modelsDir, tokenizersDir string) (string, error) {
	if _, ok := LookupReal(name); ok || IsGGUF(name) {
		return resolveGGUF(ctx, name, modelsDir, tokenizersDir)
	}
	preset, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return name, nil
	}
	p, err := Lookup(preset)
	if _, derr := LookupDFlash(preset); err != nil && derr == nil {
		return resolveDFlash(ctx, name, preset, modelsDir)
	}
	if err != nil {
		return "", err
	}
	dir := filepath.Join(modelsDir, preset)
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir, nil
	}
	w := mlx.NewWorker()
	defer w.Close()
	tmp := dir + ".partial"
	os.RemoveAll(tmp)
	err = w.Do(ctx, func() error {
		_, err := Write(Options{Preset: preset, Out: tmp, Tokenizer: filepath.Join(tokenizersDir, TokenizerFor(p.Arch))})
		return err
	})
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("synthesize %s: %w", name, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("synthesize %s: %w", name, err)
	}
	return dir, nil
}
