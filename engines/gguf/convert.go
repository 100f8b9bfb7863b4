package gguf

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/safetensors"
)

// ConverterVersion is recorded in a converted config.json ("hippo": {"gguf_converter": N}) and
// raised whenever Convert's output changes, so cached conversions are redone.
const ConverterVersion = 1

// groupSize is the block size of every GGUF type MLX maps to its affine quantization.
const groupSize = 32

// quantBits are the GGUF types MLX's loader turns into affine-quantized arrays, with their width.
var quantBits = map[Type]int{Q4_0: 4, Q4_1: 4, Q8_0: 8}

// dense are the GGUF types MLX's loader copies as plain arrays.
var dense = map[Type]bool{F32: true, F16: true, BF16: true}

// Options configures Convert.
type Options struct {
	// In is the GGUF file, Out the directory to write (created; existing files are replaced).
	In, Out string
	// Layers, when positive, keeps only the first Layers transformer blocks (tests use a short
	// stack of real layers where the whole model would be too slow).
	Layers int
}

// Result summarizes a conversion.
type Result struct {
	Config  map[string]any
	Tensors int   // tensors written
	Bytes   int64 // bytes of tensor data written
}

// Convert writes the GGUF file o.In as an mlx-community-style checkpoint directory o.Out that
// Hippo and mlx-lm load unchanged. It must run on the MLX thread.
//
// llama.cpp's converter reorders the rows of each attention head of Q and K so that GGML's
// rotary embedding (adjacent pairs) matches Hugging Face's (halves); Convert restores the Hugging
// Face order, which is exact for quantized tensors too, since quantization groups run along rows.
func Convert(o Options) (*Result, error) {
	g, err := Open(o.In)
	if err != nil {
		return nil, err
	}
	plan, err := planLlama(g, o.Layers)
	if err != nil {
		return nil, fmt.Errorf("gguf: %s: %w", o.In, err)
	}
	if err := writeTokenizer(g, o.Out); err != nil {
		return nil, err
	}
	res, err := writeTensors(o, plan)
	if err != nil {
		return nil, err
	}
	if err := writeJSON(filepath.Join(o.Out, "config.json"), plan.config); err != nil {
		return nil, err
	}
	res.Config = plan.config
	return res, nil
}

// WriteTokenizer writes the tokenizer of the GGUF file in (tokenizer.json, tokenizer_config.json
// with the chat template, generation_config.json) into the directory out. It needs no MLX.
func WriteTokenizer(in, out string) error {
	g, err := Open(in)
	if err != nil {
		return err
	}
	return writeTokenizer(g, out)
}

func writeTokenizer(g *File, out string) error {
	tok, err := tokenizerFiles(g)
	if err != nil {
		return fmt.Errorf("gguf: %s: %w", g.Path, err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	if err := writeJSON(filepath.Join(out, "generation_config.json"), tok.generation); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tok.tokenizer, "tokenizer_config.json": tok.config} {
		if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
			return fmt.Errorf("gguf: %w", err)
		}
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("gguf: %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("gguf: %w", err)
	}
	return nil
}

// ConfigOf returns the config.json that Convert writes for g, without reading any tensor.
func ConfigOf(g *File) (map[string]any, error) {
	p, err := planLlama(g, 0)
	if err != nil {
		return nil, fmt.Errorf("gguf: %s: %w", g.Path, err)
	}
	return p.config, nil
}

// mapped is one GGUF tensor's place in the converted checkpoint.
type mapped struct {
	src   Tensor
	dst   string // module path, e.g. "model.layers.0.self_attn.q_proj"
	field string // "weight" or "bias"
	heads int    // >0: undo llama.cpp's rotary row order with this many heads
	bits  int    // 0 for dense
}

type llamaPlan struct {
	config  map[string]any
	tensors []mapped
	headDim int
}

var blockName = regexp.MustCompile(`^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$`)

// llamaBlock maps GGUF per-layer tensor names to Hugging Face module names.
var llamaBlock = map[string]string{
	"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
	"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
	"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
	"ffn_down": "mlp.down_proj",
}

var llamaTop = map[string]string{
	"token_embd.weight": "model.embed_tokens", "output_norm.weight": "model.norm", "output.weight": "lm_head",
}

func planLlama(g *File, keep int) (*llamaPlan, error) {
	arch := g.Architecture()
	if arch != "llama" {
		return nil, fmt.Errorf("%w: architecture %q: Hippo converts llama GGUF files (SmolLM2, Llama 2/3 and their fine-tunes)", ErrUnsupported, arch)
	}
	ints := map[string]int{}
	for _, k := range []string{"embedding_length", "block_count", "attention.head_count", "feed_forward_length"} {
		v, ok := g.Int(arch + "." + k)
		if !ok || v <= 0 {
			return nil, needErr(arch+"."+k, "a positive integer")
		}
		ints[k] = v
	}
	hidden, layers, heads := ints["embedding_length"], ints["block_count"], ints["attention.head_count"]
	total := layers
	if keep > 0 && keep < layers {
		layers = keep
	}
	kvHeads, ok := g.Int(arch + ".attention.head_count_kv")
	if !ok {
		kvHeads = heads
	}
	if kvHeads <= 0 || heads%kvHeads != 0 {
		return nil, fmt.Errorf("%w: %d attention heads and %d KV heads", ErrUnsupported, heads, kvHeads)
	}
	headDim, ok := g.Int(arch + ".attention.key_length")
	if !ok {
		if hidden%heads != 0 {
			return nil, fmt.Errorf("%w: embedding_length %d is not a multiple of %d heads", ErrUnsupported, hidden, heads)
		}
		headDim = hidden / heads
	}
	if rd, ok := g.Int(arch + ".rope.dimension_count"); ok && rd != headDim {
		return nil, fmt.Errorf("%w: rotary embedding on %d of %d head dimensions", ErrUnsupported, rd, headDim)
	}
	if st, ok := g.String(arch + ".rope.scaling.type"); ok && st != "none" && st != "" {
		return nil, fmt.Errorf("%w: rope scaling %q", ErrUnsupported, st)
	}
	eps, ok := g.Float(arch + ".attention.layer_norm_rms_epsilon")
	if !ok {
		return nil, needErr(arch+".attention.layer_norm_rms_epsilon", "a number")
	}
	theta, ok := g.Float(arch + ".rope.freq_base")
	if !ok {
		theta = 10000
	}
	tokens, ok := g.Strings("tokenizer.ggml.tokens")
	if !ok {
		return nil, needErr("tokenizer.ggml.tokens", "a list of strings")
	}
	vocab, ok := g.Int(arch + ".vocab_size")
	if !ok {
		vocab = len(tokens)
	}
	ctxLen, ok := g.Int(arch + ".context_length")
	if !ok {
		ctxLen = 2048
	}

	p := &llamaPlan{headDim: headDim}
	tied := true
	bitsCount := map[int]int{}
	bias := false
	for _, t := range g.Tensors {
		m := mapped{src: t}
		switch {
		case dense[t.Type]:
		case quantBits[t.Type] != 0:
			m.bits = quantBits[t.Type]
			if len(t.Shape) != 2 || t.Shape[1]%groupSize != 0 {
				return nil, fmt.Errorf("%w: tensor %s of type %s has shape %v, which MLX cannot quantize in groups of %d", ErrUnsupported, t.Name, t.Type, t.Shape, groupSize)
			}
		default:
			return nil, fmt.Errorf("%w: tensor %s has type %s; MLX loads F32, F16, BF16, Q4_0, Q4_1 and Q8_0 (requantize the file with llama-quantize, e.g. to Q8_0 or Q4_1)", ErrUnsupported, t.Name, t.Type)
		}
		if dst, ok := llamaTop[t.Name]; ok {
			m.dst, m.field = dst, "weight"
			if dst == "lm_head" {
				tied = false
			}
		} else if sm := blockName.FindStringSubmatch(t.Name); sm != nil {
			layer, _ := strconv.Atoi(sm[1])
			mod, ok := llamaBlock[sm[2]]
			if !ok || layer >= total {
				return nil, fmt.Errorf("%w: tensor %s (type %s) has no place in a %d-layer llama model", ErrUnsupported, t.Name, t.Type, total)
			}
			if layer >= layers {
				continue
			}
			m.dst, m.field = fmt.Sprintf("model.layers.%d.%s", layer, mod), sm[3]
			switch sm[2] {
			case "attn_q":
				m.heads = heads
			case "attn_k":
				m.heads = kvHeads
			}
			if m.field == "bias" {
				bias = true
			}
		} else if t.Name == "rope_freqs.weight" {
			return nil, fmt.Errorf("%w: tensor %s (type %s): Llama 3.1-style rope frequency scaling", ErrUnsupported, t.Name, t.Type)
		} else {
			return nil, fmt.Errorf("%w: tensor %s (type %s) is not part of a llama model", ErrUnsupported, t.Name, t.Type)
		}
		if m.field == "bias" && m.bits != 0 {
			return nil, fmt.Errorf("%w: bias tensor %s is quantized (%s)", ErrUnsupported, t.Name, t.Type)
		}
		if m.bits != 0 {
			bitsCount[m.bits]++
		}
		p.tensors = append(p.tensors, m)
	}
	sort.Slice(p.tensors, func(i, j int) bool { return p.tensors[i].dst+p.tensors[i].field < p.tensors[j].dst+p.tensors[j].field })

	cfg := map[string]any{
		"architectures":           []string{"LlamaForCausalLM"},
		"model_type":              "llama",
		"hidden_size":             hidden,
		"intermediate_size":       ints["feed_forward_length"],
		"num_hidden_layers":       layers,
		"num_attention_heads":     heads,
		"num_key_value_heads":     kvHeads,
		"head_dim":                headDim,
		"vocab_size":              vocab,
		"rms_norm_eps":            eps,
		"rope_theta":              theta,
		"max_position_embeddings": ctxLen,
		"tie_word_embeddings":     tied,
		"attention_bias":          bias,
		"mlp_bias":                false,
		"hidden_act":              "silu",
	}
	if id, ok := g.Int("tokenizer.ggml.bos_token_id"); ok {
		cfg["bos_token_id"] = id
	}
	if id, ok := g.Int("tokenizer.ggml.eos_token_id"); ok {
		cfg["eos_token_id"] = id
	}
	if name, ok := g.String("general.name"); ok {
		cfg["_name_or_path"] = name
	}
	cfg["hippo"] = map[string]any{"gguf_converter": ConverterVersion, "source": filepath.Base(g.Path)}
	if len(bitsCount) > 0 {
		// The most common width is the default; tensors of another width (or dense linear
		// layers among quantized ones) get a per-module entry, as mlx-lm's mixed quantization writes.
		main := 0
		for b, n := range bitsCount {
			if n > bitsCount[main] || n == bitsCount[main] && b > main {
				main = b
			}
		}
		q := map[string]any{"group_size": groupSize, "bits": main}
		for _, m := range p.tensors {
			if m.field == "weight" && m.bits != 0 && m.bits != main {
				q[m.dst] = map[string]any{"group_size": groupSize, "bits": m.bits}
			}
		}
		cfg["quantization"] = q
		cfg["quantization_config"] = q
	}
	p.config = cfg
	return p, nil
}

var stDType = map[mlx.DType]safetensors.DType{
	mlx.Float32: "F32", mlx.Float16: "F16", mlx.BFloat16: "BF16", mlx.Uint32: "U32",
	mlx.Int32: "I32", mlx.Int8: "I8", mlx.Uint8: "U8", mlx.Int16: "I16",
}

// outTensor is one array to write.
type outTensor struct {
	name string
	arr  mlx.Array
}

func writeTensors(o Options, p *llamaPlan) (*Result, error) {
	for _, m := range p.tensors {
		if m.heads > 0 && m.src.Shape[0] != m.heads*p.headDim {
			return nil, fmt.Errorf("gguf: %s: tensor %s has %d rows, want %d heads x %d: %w", o.In, m.src.Name, m.src.Shape[0], m.heads, p.headDim, ErrUnsupported)
		}
	}
	scope := mlx.NewScope()
	defer scope.Close()
	arrays, err := mlx.LoadGGUF(o.In)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	var outs []outTensor
	for _, m := range p.tensors {
		base := strings.TrimSuffix(m.src.Name, "."+m.field)
		parts := []string{m.field}
		if m.bits != 0 {
			parts = []string{"weight", "scales", "biases"}
		}
		for _, part := range parts {
			src := base + "." + part
			a, ok := arrays[src]
			if !ok {
				return nil, fmt.Errorf("gguf: %s: MLX's loader returned no %s for tensor %s of type %s", o.In, src, m.src.Name, m.src.Type)
			}
			if m.heads > 0 {
				a = unpermute(a, m.heads)
			}
			outs = append(outs, outTensor{name: m.dst + "." + part, arr: a})
		}
	}
	if err := mlx.Check(); err != nil {
		return nil, fmt.Errorf("gguf: %s: %w", o.In, err)
	}
	infos := make([]safetensors.TensorInfo, len(outs))
	for i, t := range outs {
		dt, ok := stDType[t.arr.DType()]
		if !ok {
			return nil, fmt.Errorf("gguf: %s: %s has dtype %s", o.In, t.name, t.arr.DType())
		}
		infos[i] = safetensors.TensorInfo{Name: t.name, DType: dt, Shape: t.arr.Shape()}
	}
	w, err := safetensors.Create(filepath.Join(o.Out, "model.safetensors"), infos, map[string]string{"format": "mlx"})
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	res := &Result{}
	for _, t := range outs {
		data, err := t.arr.Bytes()
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("gguf: %s: read %s: %w", o.In, t.name, err)
		}
		if err := w.Write(t.name, data); err != nil {
			w.Close()
			return nil, fmt.Errorf("gguf: %w", err)
		}
		res.Tensors++
		res.Bytes += int64(len(data))
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	return res, nil
}

// unpermute restores Hugging Face's row order of a Q or K projection (weight, scales, biases or
// bias) from llama.cpp's. The converter maps row h*D + s*D/2 + i (head h, half s, index i) to
// h*D + 2*i + s; this is the inverse.
func unpermute(a mlx.Array, heads int) mlx.Array {
	shape := a.Shape()
	rows, rest := shape[0], 1
	for _, d := range shape[1:] {
		rest *= d
	}
	half := rows / heads / 2
	x := mlx.Reshape(a, heads, half, 2, rest)
	x = mlx.Transpose(x, 0, 2, 1, 3)
	return mlx.Reshape(x, shape...)
}
