package model_test

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/safetensors"
	"github.com/hippo-bench/hippo/engines/synth"
)

// tinyTarget is tiny-qwen3's config, the target dflash-tiny drafts for.
var tinyTarget = &model.Config{ModelType: "qwen3", HiddenSize: 64, NumLayers: 4, VocabSize: 151936}

func writeDFlash(t *testing.T, w *mlx.Worker, o synth.DFlashOptions) string {
	t.Helper()
	if o.Out == "" {
		o.Out = t.TempDir()
	}
	if err := w.Do(context.Background(), func() error { _, err := synth.WriteDFlash(o); return err }); err != nil {
		t.Fatal(err)
	}
	return o.Out
}

// TestDFlashForward checks the block forward against the reference's semantics: non-causal
// attention inside the block, context keys cached (and only context keys), and a context fed in
// pieces giving the same drafts as one fed at once.
func TestDFlashForward(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	dir := writeDFlash(t, w, synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3, DType: "f32"}})
	const ctxLen, split = 7, 4
	err := w.Do(context.Background(), func() error {
		d, err := model.LoadDFlash(dir, mlx.Float32, tinyTarget)
		if err != nil {
			return err
		}
		defer d.Close()
		c := d.Config()
		b, h, f := c.BlockSize, c.HiddenSize, len(c.TargetLayerIDs)*c.HiddenSize
		s := mlx.NewScope()
		defer s.Close()
		key := mlx.RandomKey(5)
		k1, k2 := mlx.RandomSplit(key)
		block := mlx.Normal(k1, mlx.Float32, 1, 1, b, h)
		ctx := mlx.Normal(k2, mlx.Float32, 1, 1, ctxLen, f)
		run := func(block mlx.Array, pieces ...[2]int) ([]float32, []int) {
			caches := d.NewCaches()
			defer func() {
				for _, c := range caches {
					c.Free()
				}
			}()
			var out mlx.Array
			for _, p := range pieces {
				out = d.Forward(block, mlx.Slice(ctx, []int{0, p[0], 0}, []int{1, p[1], f}), caches)
			}
			if err := mlx.Eval(out); err != nil {
				t.Fatal(err)
			}
			if got, want := out.Shape(), []int{1, b, h}; !slices.Equal(got, want) {
				t.Errorf("Forward shape = %v; want %v", got, want)
			}
			v, err := out.Float32s()
			if err != nil {
				t.Fatal(err)
			}
			return v, []int{caches[0].Offset(), caches[len(caches)-1].Offset()}
		}
		whole, offsets := run(block, [2]int{0, ctxLen})
		if want := []int{ctxLen, ctxLen}; !slices.Equal(offsets, want) {
			t.Errorf("cache offsets after one block = %v; want %v (context only, the block is not cached)", offsets, want)
		}
		pieces, _ := run(block, [2]int{0, split}, [2]int{split, ctxLen})
		if d := maxDiff(whole, pieces); d > 1e-4 {
			t.Errorf("context fed in two pieces differs from one piece by %g; want the same drafts", d)
		}
		// Change the last block position only: with non-causal attention every position sees it.
		last := mlx.Concat(1, mlx.Slice(block, []int{0, 0, 0}, []int{1, b - 1, h}), mlx.Normal(mlx.RandomKey(6), mlx.Float32, 1, 1, 1, h))
		changed, _ := run(last, [2]int{0, ctxLen})
		if d := maxDiff(whole[h:2*h], changed[h:2*h]); d < 1e-4 {
			t.Errorf("block position 1 moved by %g when only position %d changed; want non-causal attention", d, b-1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLoadDFlashRejectsBadCheckpoints is invariant 6 for DFlash drafts.
func TestLoadDFlashRejectsBadCheckpoints(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	good := writeDFlash(t, w, synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3}})
	target := t.TempDir()
	if err := w.Do(context.Background(), func() error {
		_, err := synth.Write(synth.Options{Preset: "tiny-qwen3", Out: target, Seed: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		dir     string // checkpoint to load instead of a damaged copy of good
		damage  func(t *testing.T, dir string)
		is      error
		message string
	}{
		{"missing fc", "", dropTensor("fc.weight"), model.ErrCheckpoint, `tensor "fc.weight" is missing`},
		{"tapped layer beyond the target", "", editConfig(func(c map[string]any) {
			c["dflash_config"].(map[string]any)["target_layer_ids"] = []int{1, 9}
		}), nil, "layer 9 is outside the target's 4 layers"},
		{"trained for a deeper target", "", editConfig(func(c map[string]any) { c["num_target_layers"] = 36 }), nil, "target of 36 layers"},
		{"fc for another tap count", "", editConfig(func(c map[string]any) {
			c["dflash_config"].(map[string]any)["target_layer_ids"] = []int{0, 1, 2}
		}), model.ErrCheckpoint, `"fc.weight" has shape [64 128], the config implies [64 192]`},
		{"no target_layer_ids", "", editConfig(func(c map[string]any) { delete(c["dflash_config"].(map[string]any), "target_layer_ids") }), model.ErrNotDFlash, "target_layer_ids is missing"},
		{"no mask token", "", editConfig(func(c map[string]any) { delete(c["dflash_config"].(map[string]any), "mask_token_id") }), model.ErrNotDFlash, "mask_token_id is missing"},
		{"mask outside vocabulary", "", editConfig(func(c map[string]any) { c["dflash_config"].(map[string]any)["mask_token_id"] = 200000 }), nil, "mask_token_id 200000 is outside"},
		{"other hidden size", "", editConfig(func(c map[string]any) { c["hidden_size"] = 128 }), nil, "hidden_size 128, the target 64"},
		{"block of one", "", editConfig(func(c map[string]any) { c["block_size"] = 1 }), nil, "block_size 1"},
		{"dflash2 variant", "", editConfig(func(c map[string]any) { c["architectures"] = []string{"DFlash2DraftModel"} }), model.ErrNotDFlash, "DFlash2"},
		{"causal variant", "", editConfig(func(c map[string]any) { c["is_causal"] = true }), nil, "causal DFlash drafts are not supported"},
		{"extra tensors", "", editConfig(func(c map[string]any) { c["num_hidden_layers"] = 1; c["layer_types"] = []string{"full_attention"} }), model.ErrCheckpoint, "not used by a DFlash draft"},
		{"a target given as the draft", target, nil, model.ErrNotDFlash, "give the draft's directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir
			if dir == "" {
				dir = t.TempDir()
				copyDir(t, good, dir)
				tc.damage(t, dir)
			}
			var err error
			w.Do(context.Background(), func() error {
				d, lerr := model.LoadDFlash(dir, mlx.Float32, tinyTarget)
				if lerr == nil {
					d.Close()
				}
				err = lerr
				return nil
			})
			if err == nil {
				t.Fatalf("LoadDFlash of a draft with %s succeeded; want an error", tc.name)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("LoadDFlash error %q is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("LoadDFlash error = %q; want it to mention %q", err, tc.message)
			}
		})
	}
}

// dropTensor rewrites dir/model.safetensors without tensor name.
func dropTensor(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		p := filepath.Join(dir, "model.safetensors")
		f, err := safetensors.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		var infos []safetensors.TensorInfo
		data := map[string][]byte{}
		for _, ti := range f.Tensors() {
			if ti.Name == name {
				continue
			}
			b, err := f.Data(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			infos = append(infos, ti)
			data[ti.Name] = append([]byte(nil), b...)
		}
		f.Close()
		os.Remove(p)
		out, err := safetensors.Create(p, infos, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range infos {
			if err := out.Write(ti.Name, data[ti.Name]); err != nil {
				t.Fatal(err)
			}
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}
