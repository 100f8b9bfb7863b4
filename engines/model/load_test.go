package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/safetensors"
	"github.com/hippo-bench/hippo/engines/synth"
)

// TestLoadRejectsBadCheckpoints checks invariant 6 for checkpoints: every kind of damage gives an
// error that says what is wrong, never a panic or a half-loaded model.
func TestLoadRejectsBadCheckpoints(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	good := t.TempDir()
	if err := w.Do(context.Background(), func() error {
		_, err := synth.Write(synth.Options{Preset: "tiny-llama", Out: good, Seed: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		damage  func(t *testing.T, dir string)
		is      error
		message string
	}{
		{"truncated weights", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model.safetensors")
			fi, _ := os.Stat(p)
			if err := os.Truncate(p, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, safetensors.ErrTruncated, "model.safetensors"},
		{"garbage header", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model.safetensors")
			b, _ := os.ReadFile(p)
			copy(b[8:], "not json at all")
			os.WriteFile(p, b, 0o644)
		}, safetensors.ErrCorrupt, "model.safetensors"},
		{"wrong shape", editConfig(func(c map[string]any) { c["intermediate_size"] = 256 }), model.ErrCheckpoint, "has shape [128 64], the config implies [256 64]"},
		{"missing tensors", editConfig(func(c map[string]any) { c["num_hidden_layers"] = 5 }), model.ErrCheckpoint, `"model.layers.4.self_attn.q_proj.weight" is missing`},
		{"extra tensors", editConfig(func(c map[string]any) { c["num_hidden_layers"] = 3 }), model.ErrCheckpoint, "not used"},
		{"unknown architecture", editConfig(func(c map[string]any) { c["model_type"] = "mamba"; c["architectures"] = []string{"MambaForCausalLM"} }), model.ErrUnsupported, `model_type "mamba"`},
		{"quantized config, dense weights", editConfig(func(c map[string]any) { c["quantization"] = map[string]any{"group_size": 64, "bits": 4} }), nil, ""},
		{"bad quantization", editConfig(func(c map[string]any) { c["quantization"] = map[string]any{"group_size": 64, "bits": 7} }), nil, "bits 7"},
		{"config not json", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "config.json"), []byte("{\"model_type\": "), 0o644)
		}, nil, "invalid JSON"},
		{"no weights", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "model.safetensors")) }, nil, "safetensors"},
		{"no config", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "config.json")) }, nil, "Hugging Face checkpoint directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, good, dir)
			tc.damage(t, dir)
			var err error
			w.Do(context.Background(), func() error {
				m, lerr := model.Load(dir, mlx.Float32)
				if lerr == nil {
					m.Close()
				}
				err = lerr
				return nil
			})
			if tc.name == "quantized config, dense weights" {
				// Dense tensors under a quantization section load as dense: mlx-lm does the same
				// for layers without scales.
				if err != nil {
					t.Fatalf("Load = %v; want success", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Load of a checkpoint with %s succeeded; want an error", tc.name)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Load error %q is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("Load error = %q; want it to mention %q", err, tc.message)
			}
		})
	}
}

func editConfig(edit func(map[string]any)) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		p := filepath.Join(dir, "config.json")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		edit(c)
		b, _ = json.Marshal(c)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
