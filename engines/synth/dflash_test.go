package synth

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// TestDFlashPresetShape checks the 4B draft against the parameter count a public DFlash training
// recipe gives for z-lab/Qwen3-4B-DFlash-b16 (537,427,200: five Qwen3-4B-wide layers, fc from five
// taps, two norms; no embedding, no lm_head).
func TestDFlashPresetShape(t *testing.T) {
	n, err := DFlashParams(DFlashOptions{Options: Options{Preset: "dflash-qwen3-4b-b16"}})
	if err != nil {
		t.Fatal(err)
	}
	if n != 537_427_200 {
		t.Errorf("dflash-qwen3-4b-b16 has %d parameters; want 537427200", n)
	}
}

func TestWriteDFlash(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	target := t.TempDir()
	if err := w.Do(context.Background(), func() error {
		_, err := Write(Options{Preset: "tiny-qwen3", Out: target, Seed: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tc, err := model.ReadConfig(target)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		o       DFlashOptions
		taps    []int
		message string // want an error mentioning it
	}{
		{"tiny", DFlashOptions{Options: Options{Preset: "dflash-tiny"}, Target: target}, []int{1, 2}, ""},
		{"tiny 4-bit, three layers, other taps", DFlashOptions{Options: Options{Preset: "dflash-tiny", Bits: 4, Layers: 3, Set: []string{"target_layer_ids=[0,3]"}}, Target: target}, []int{0, 3}, ""},
		{"4B draft for a tiny target", DFlashOptions{Options: Options{Preset: "dflash-qwen3-4b-b16"}, Target: target}, nil, "hidden_size 2560, the target 64"},
		{"taps beyond the target", DFlashOptions{Options: Options{Preset: "dflash-tiny", Set: []string{"target_layer_ids=[1,9]"}}, Target: target}, nil, "layer 9 is outside"},
		{"unknown preset", DFlashOptions{Options: Options{Preset: "tiny-qwen3"}}, nil, "unknown dflash preset"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.Out = t.TempDir()
			c.o.Seed = 2
			err := w.Do(context.Background(), func() error {
				if _, err := WriteDFlash(c.o); err != nil {
					return err
				}
				d, err := model.LoadDFlash(c.o.Out, mlx.Float32, tc)
				if err != nil {
					return err
				}
				defer d.Close()
				if got := d.TargetLayers(); !slices.Equal(got, c.taps) {
					t.Errorf("target layers = %v; want %v", got, c.taps)
				}
				return nil
			})
			if c.message == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.message) {
				t.Errorf("WriteDFlash error = %v; want it to mention %q", err, c.message)
			}
		})
	}
}
