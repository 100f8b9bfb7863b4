package synth

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/safetensors"
)

// Options says what to write. The zero value of each optional field keeps the preset's value.
type Options struct {
	Preset    string
	Seed      uint64
	Tokenizer string // directory with tokenizer.json (+ tokenizer_config.json), copied alongside
	Out       string
	Layers    int    // override num_hidden_layers
	DType     string // bf16 (default), f16 or f32
	Bits      int    // 0 (dense), 4 or 8
	GroupSize int    // default 64
	// Set overrides config.json fields: "key=value", value parsed as JSON when it parses.
	Set []string
	// ShardBytes caps one safetensors file; 0 means 4 GiB.
	ShardBytes int64
}

type tensor struct {
	name  string
	shape []int
	// std of the normal init; ones means a norm weight (initialised near 1).
	std  float64
	ones bool
	// quantize is set for matrices mlx-lm's convert would quantize.
	quantize bool
}

// Write synthesizes the checkpoint described by o and returns the config it wrote. Must run on
// the MLX thread.
func Write(o Options) (map[string]any, error) {
	c, err := prepare(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	if err := writeTensors(o, c.tensors, c.dt, c.stDT, c.gs); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(c.file, "", "  ")
	if err := os.WriteFile(filepath.Join(o.Out, "config.json"), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	if o.Tokenizer != "" {
		if err := copyTokenizer(o.Tokenizer, o.Out); err != nil {
			return nil, err
		}
	}
	return c.file, nil
}

// checkpoint is what Write would write for some Options, before any tensor is generated.
type checkpoint struct {
	file    map[string]any // config.json as written
	tensors []tensor
	dt      mlx.DType
	stDT    safetensors.DType
	gs      int
}

// prepare resolves o into a config and a tensor layout, without MLX.
func prepare(o Options) (*checkpoint, error) {
	p, err := Lookup(o.Preset)
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{}
	for k, v := range p.Config {
		cfg[k] = v
	}
	if o.Layers > 0 {
		cfg["num_hidden_layers"] = o.Layers
	}
	for _, kv := range o.Set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("synth: --set %q: want key=value", kv)
		}
		var parsed any
		if err := json.Unmarshal([]byte(v), &parsed); err != nil {
			parsed = v
		}
		cfg[k] = parsed
	}
	dt, stDT, err := storageDType(o.DType)
	if err != nil {
		return nil, err
	}
	cfg["torch_dtype"] = map[mlx.DType]string{mlx.BFloat16: "bfloat16", mlx.Float16: "float16", mlx.Float32: "float32"}[dt]
	gs := o.GroupSize
	if gs == 0 {
		gs = 64
	}
	if o.Bits != 0 {
		if o.Bits != 4 && o.Bits != 8 {
			return nil, fmt.Errorf("synth: --bits %d: use 4 or 8", o.Bits)
		}
		q := map[string]any{"group_size": gs, "bits": o.Bits}
		cfg["quantization"] = q
		cfg["quantization_config"] = q
	}
	ts, err := layout(p.Arch, cfg)
	if err != nil {
		return nil, err
	}
	file := cfg
	if cfg["model_type"] == "gemma3" {
		file = multimodalConfig(cfg)
	}
	return &checkpoint{file: file, tensors: ts, dt: dt, stDT: stDT, gs: gs}, nil
}

func storageDType(s string) (mlx.DType, safetensors.DType, error) {
	switch s {
	case "", "bf16", "bfloat16":
		return mlx.BFloat16, "BF16", nil
	case "f16", "float16":
		return mlx.Float16, "F16", nil
	case "f32", "float32":
		return mlx.Float32, "F32", nil
	}
	return 0, "", fmt.Errorf("synth: --dtype %q: use bf16, f16 or f32", s)
}

func num(cfg map[string]any, k string) int {
	switch v := cfg[k].(type) {
	case int:
		return v
	case float64:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

// layout lists the tensors of an architecture with Hugging Face names and shapes.
func layout(arch string, cfg map[string]any) ([]tensor, error) {
	h, l, heads := num(cfg, "hidden_size"), num(cfg, "num_hidden_layers"), num(cfg, "num_attention_heads")
	kv, hd, inter, vocab := num(cfg, "num_key_value_heads"), num(cfg, "head_dim"), num(cfg, "intermediate_size"), num(cfg, "vocab_size")
	if hd == 0 && heads > 0 {
		hd = h / heads
	}
	if h <= 0 || l <= 0 || heads <= 0 || kv <= 0 || hd <= 0 || inter <= 0 || vocab <= 0 {
		return nil, fmt.Errorf("synth: config has non-positive sizes (hidden %d, layers %d, heads %d, kv heads %d, head_dim %d, intermediate %d, vocab %d)", h, l, heads, kv, hd, inter, vocab)
	}
	lin := func(name string, out, in int) tensor {
		return tensor{name: name, shape: []int{out, in}, std: 1 / math.Sqrt(float64(in)), quantize: true}
	}
	norm := func(name string, n int) tensor { return tensor{name: name, shape: []int{n}, ones: true} }
	if arch == "gemma3" {
		// Gemma scales by 1 + weight: a weight near 0 is the near-identity norm the others get.
		norm = func(name string, n int) tensor { return tensor{name: name, shape: []int{n}, std: 0.1} }
	}
	pre := tensorPrefix(cfg)
	// Embeddings are small next to what the layers add, so that a tied lm_head does not simply
	// echo the input token: random models then generate varied text, which parity tests need.
	embStd := 0.1
	if arch == "gemma3" {
		// Gemma multiplies embeddings by sqrt(hidden): keep the scaled ones at std 0.25.
		embStd = 0.25 / math.Sqrt(float64(h))
	}
	ts := []tensor{{name: pre + "model.embed_tokens.weight", shape: []int{vocab, h}, std: embStd, quantize: true}, norm(pre+"model.norm.weight", h)}
	tied, _ := cfg["tie_word_embeddings"].(bool)
	if !tied {
		ts = append(ts, lin(pre+"lm_head.weight", vocab, h))
	}
	for i := 0; i < l; i++ {
		p := fmt.Sprintf("%smodel.layers.%d.", pre, i)
		ts = append(ts,
			lin(p+"self_attn.q_proj.weight", heads*hd, h),
			lin(p+"self_attn.k_proj.weight", kv*hd, h),
			lin(p+"self_attn.v_proj.weight", kv*hd, h),
			lin(p+"self_attn.o_proj.weight", h, heads*hd),
			lin(p+"mlp.gate_proj.weight", inter, h),
			lin(p+"mlp.up_proj.weight", inter, h),
			lin(p+"mlp.down_proj.weight", h, inter),
			norm(p+"input_layernorm.weight", h),
			norm(p+"post_attention_layernorm.weight", h),
		)
		switch arch {
		case "qwen3", "gemma3":
			ts = append(ts, norm(p+"self_attn.q_norm.weight", hd), norm(p+"self_attn.k_norm.weight", hd))
		}
		if arch == "gemma3" {
			ts = append(ts, norm(p+"pre_feedforward_layernorm.weight", h), norm(p+"post_feedforward_layernorm.weight", h))
		}
	}
	return ts, nil
}

// entry is one stored tensor (a quantized matrix becomes three).
type entry struct {
	info safetensors.TensorInfo
	src  *tensor
	part string // "", "weight", "scales", "biases"
}

// stored lists the tensors as stored, sorted by name: a quantized matrix becomes three.
func stored(ts []tensor, bits, gs int, stDT safetensors.DType) []entry {
	var entries []entry
	for i := range ts {
		t := &ts[i]
		if bits != 0 && t.quantize && t.shape[1]%gs == 0 {
			base := strings.TrimSuffix(t.name, ".weight")
			out, in := t.shape[0], t.shape[1]
			entries = append(entries,
				entry{safetensors.TensorInfo{Name: base + ".weight", DType: "U32", Shape: []int{out, in * bits / 32}}, t, "weight"},
				entry{safetensors.TensorInfo{Name: base + ".scales", DType: stDT, Shape: []int{out, in / gs}}, t, "scales"},
				entry{safetensors.TensorInfo{Name: base + ".biases", DType: stDT, Shape: []int{out, in / gs}}, t, "biases"})
			continue
		}
		entries = append(entries, entry{safetensors.TensorInfo{Name: t.name, DType: stDT, Shape: t.shape}, t, ""})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].info.Name < entries[j].info.Name })
	return entries
}

// shard splits entries into files of at most limit bytes of data (0 means 4 GiB) and returns the
// total data size.
func shard(entries []entry, limit int64) ([][]entry, int64) {
	if limit == 0 {
		limit = 4 << 30
	}
	var shards [][]entry
	var size, total int64
	for _, e := range entries {
		n := bytesOf(e.info)
		if len(shards) == 0 || size+n > limit && size > 0 {
			shards = append(shards, nil)
			size = 0
		}
		shards[len(shards)-1] = append(shards[len(shards)-1], e)
		size += n
		total += n
	}
	return shards, total
}

// shardName is the file name of shard i of n, as Hugging Face names them.
func shardName(i, n int) string {
	if n == 1 {
		return "model.safetensors"
	}
	return fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n)
}

// fileMetadata is the safetensors metadata mlx-lm writes.
var fileMetadata = map[string]string{"format": "mlx"}

func writeTensors(o Options, ts []tensor, dt mlx.DType, stDT safetensors.DType, gs int) error {
	shards, total := shard(stored(ts, o.Bits, gs, stDT), o.ShardBytes)
	weightMap := map[string]string{}
	// Quantized tensors come in threes from one source matrix; cache the last quantization.
	var cache struct {
		src   *tensor
		parts map[string][]byte
	}
	for si, shard := range shards {
		name := shardName(si, len(shards))
		infos := make([]safetensors.TensorInfo, len(shard))
		for i, e := range shard {
			infos[i] = e.info
			weightMap[e.info.Name] = name
		}
		w, err := safetensors.Create(filepath.Join(o.Out, name), infos, fileMetadata)
		if err != nil {
			return fmt.Errorf("synth: %w", err)
		}
		for _, e := range shard {
			var data []byte
			if e.part == "" {
				data, err = generate(o.Seed, e.src, dt, 0, 0)
			} else {
				if cache.src != e.src {
					cache.src = e.src
					cache.parts, err = generateQuantized(o.Seed, e.src, dt, gs, o.Bits)
				}
				data = cache.parts[e.part]
			}
			if err != nil {
				w.Close()
				return err
			}
			if err := w.Write(e.info.Name, data); err != nil {
				w.Close()
				return fmt.Errorf("synth: %w", err)
			}
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	if len(shards) > 1 {
		if err := safetensors.WriteIndex(o.Out, weightMap, total); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	return nil
}

func bytesOf(t safetensors.TensorInfo) int64 {
	n := int64(t.DType.Size())
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

func keyFor(seed uint64, name string) uint64 {
	h := fnv.New64a()
	io.WriteString(h, name)
	return seed*0x9E3779B97F4A7C15 ^ h.Sum64()
}

// values builds the float32 values of t (lazily).
func values(seed uint64, t *tensor) mlx.Array {
	key := mlx.RandomKey(keyFor(seed, t.name))
	if t.ones {
		// Norm weights near 1 (plus a little noise so that a wrong norm shows up in parity tests).
		return mlx.AddScalar(mlx.Normal(key, mlx.Float32, 0.1, t.shape...), 1)
	}
	return mlx.Normal(key, mlx.Float32, float32(t.std), t.shape...)
}

func generate(seed uint64, t *tensor, dt mlx.DType, _, _ int) ([]byte, error) {
	s := mlx.NewScope()
	defer s.Close()
	b, err := mlx.AsType(values(seed, t), dt).Bytes()
	if err != nil {
		return nil, fmt.Errorf("synth: %s: %w", t.name, err)
	}
	return b, nil
}

func generateQuantized(seed uint64, t *tensor, dt mlx.DType, gs, bits int) (map[string][]byte, error) {
	s := mlx.NewScope()
	defer s.Close()
	// Quantize from the storage dtype, as mlx-lm's convert does from a bf16 checkpoint.
	wq, scales, biases := mlx.Quantize(mlx.AsType(values(seed, t), dt), gs, bits)
	out := map[string][]byte{}
	for name, a := range map[string]mlx.Array{"weight": wq, "scales": mlx.AsType(scales, dt), "biases": mlx.AsType(biases, dt)} {
		b, err := a.Bytes()
		if err != nil {
			return nil, fmt.Errorf("synth: quantize %s: %w", t.name, err)
		}
		out[name] = b
	}
	return out, nil
}

func copyTokenizer(from, to string) error {
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			if os.IsNotExist(err) && name != "tokenizer.json" {
				continue
			}
			return fmt.Errorf("synth: tokenizer: %w (run `just setup` to fetch the real tokenizers)", err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	return nil
}
