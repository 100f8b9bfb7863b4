package synth

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// DFlashOptions says what WriteDFlash writes: Options (Preset names a DFlash preset; Tokenizer is
// ignored, a draft uses its target's) plus the target to check the draft against.
type DFlashOptions struct {
	Options
	// Target is the checkpoint the draft will draft for; when set, the draft is checked against
	// its config before anything is written (hidden size, vocabulary, tapped layers).
	Target string
}

// WriteDFlash synthesizes a DFlash draft checkpoint in z-lab's layout (unprefixed tensors, no
// embedding or lm_head) and returns the config it wrote. --set keys target_layer_ids and
// mask_token_id go under dflash_config, the others (block_size, num_target_layers, ...) at the top
// level, as z-lab writes them. Must run on the MLX thread.
func WriteDFlash(o DFlashOptions) (map[string]any, error) {
	cfg, ts, err := prepareDFlash(o)
	if err != nil {
		return nil, err
	}
	dt, stDT, _ := storageDType(o.DType)
	gs := o.GroupSize
	if gs == 0 {
		gs = 64
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	if err := writeTensors(o.Options, ts, dt, stDT, gs); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(o.Out, "config.json"), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	return cfg, nil
}

// prepareDFlash resolves o into config.json and the tensor layout, checked by the loader's own
// parser (and against the target when given), without MLX.
func prepareDFlash(o DFlashOptions) (map[string]any, []tensor, error) {
	p, err := LookupDFlash(o.Preset)
	if err != nil {
		return nil, nil, err
	}
	cfg := map[string]any{}
	for k, v := range p.Config {
		cfg[k] = v
	}
	dc := map[string]any{}
	for k, v := range p.Config["dflash_config"].(map[string]any) {
		dc[k] = v
	}
	cfg["dflash_config"] = dc
	if o.Layers > 0 {
		cfg["num_hidden_layers"] = o.Layers
		types := make([]string, o.Layers)
		for i := range types {
			types[i] = "full_attention"
		}
		cfg["layer_types"] = types
	}
	for _, kv := range o.Set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, nil, fmt.Errorf("synth: --set %q: want key=value", kv)
		}
		var parsed any
		if err := json.Unmarshal([]byte(v), &parsed); err != nil {
			parsed = v
		}
		switch k {
		case "target_layer_ids", "mask_token_id":
			dc[k] = parsed
		default:
			cfg[k] = parsed
		}
	}
	dt, _, err := storageDType(o.DType)
	if err != nil {
		return nil, nil, err
	}
	cfg["torch_dtype"] = map[mlx.DType]string{mlx.BFloat16: "bfloat16", mlx.Float16: "float16", mlx.Float32: "float32"}[dt]
	if o.Bits != 0 {
		if o.Bits != 4 && o.Bits != 8 {
			return nil, nil, fmt.Errorf("synth: --bits %d: use 4 or 8", o.Bits)
		}
		gs := o.GroupSize
		if gs == 0 {
			gs = 64
		}
		q := map[string]any{"group_size": gs, "bits": o.Bits}
		cfg["quantization"] = q
		cfg["quantization_config"] = q
	}
	b, _ := json.Marshal(cfg)
	dcfg, err := model.ParseDFlashConfig(b, o.Preset)
	if err != nil {
		return nil, nil, fmt.Errorf("synth: %w", err)
	}
	if o.Target != "" {
		t, err := model.ReadConfig(o.Target)
		if err != nil {
			return nil, nil, fmt.Errorf("synth: --target: %w", err)
		}
		if err := dcfg.CheckTarget(t); err != nil {
			return nil, nil, fmt.Errorf("synth: preset %s does not fit target %s: %w (override with --layers or --set, e.g. --set num_target_layers=%d --set target_layer_ids=[...])", o.Preset, o.Target, err, t.NumLayers)
		}
	}
	return cfg, dflashLayout(dcfg), nil
}

// dflashLayout lists a DFlash draft's tensors with z-lab's names and shapes.
func dflashLayout(c *model.DFlashConfig) []tensor {
	h, hd := c.HiddenSize, c.KVHeadDim()
	lin := func(name string, out, in int) tensor {
		return tensor{name: name, shape: []int{out, in}, std: 1 / math.Sqrt(float64(in)), quantize: true}
	}
	norm := func(name string, n int) tensor { return tensor{name: name, shape: []int{n}, ones: true} }
	ts := []tensor{
		lin("fc.weight", h, len(c.TargetLayerIDs)*h),
		norm("hidden_norm.weight", h),
		norm("norm.weight", h),
	}
	for i := 0; i < c.NumLayers; i++ {
		p := fmt.Sprintf("layers.%d.", i)
		ts = append(ts,
			lin(p+"self_attn.q_proj.weight", c.NumHeads*hd, h),
			lin(p+"self_attn.k_proj.weight", c.NumKVHeads*hd, h),
			lin(p+"self_attn.v_proj.weight", c.NumKVHeads*hd, h),
			lin(p+"self_attn.o_proj.weight", h, c.NumHeads*hd),
			norm(p+"self_attn.q_norm.weight", hd),
			norm(p+"self_attn.k_norm.weight", hd),
			lin(p+"mlp.gate_proj.weight", c.IntermediateSize, h),
			lin(p+"mlp.up_proj.weight", c.IntermediateSize, h),
			lin(p+"mlp.down_proj.weight", h, c.IntermediateSize),
			norm(p+"input_layernorm.weight", h),
			norm(p+"post_attention_layernorm.weight", h),
		)
	}
	return ts
}

// DFlashParams is the number of parameters WriteDFlash(o) would write, from the layout alone.
func DFlashParams(o DFlashOptions) (int64, error) {
	_, ts, err := prepareDFlash(o)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, t := range ts {
		size := int64(1)
		for _, d := range t.shape {
			size *= int64(d)
		}
		n += size
	}
	return n, nil
}

// resolveDFlash is Resolve for a DFlash preset: written once to modelsDir/PRESET, seed 0, bf16.
func resolveDFlash(ctx context.Context, name, preset, modelsDir string) (string, error) {
	dir := filepath.Join(modelsDir, preset)
	err := publish(ctx, dir, hasConfig, func(tmp string) error {
		_, err := WriteDFlash(DFlashOptions{Options: Options{Preset: preset, Out: tmp}})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("synthesize %s: %w", name, err)
	}
	return dir, nil
}
