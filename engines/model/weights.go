package model

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/safetensors"
)

// ErrCheckpoint reports a checkpoint whose tensors do not match its config.
var ErrCheckpoint = errors.New("checkpoint does not match its config")

// Weights reads tensors from a checkpoint, converting floating-point tensors to the compute dtype
// once, at load time. Arrays it returns are owned by the Weights and freed by Free.
type Weights struct {
	set     *safetensors.Set
	dir     string
	prefix  string // e.g. "language_model." for multimodal checkpoints
	compute mlx.DType
	quant   *Quantization
	used    map[string]bool
	owned   []mlx.Array
	bytes   int64
	// r is the layer range being loaded, out of layers; tied says the lm_head is the embedding.
	r      Range
	layers int
	tied   bool
	// inMajor stores dense linear weights as [in, out]; see WeightLayout.
	inMajor bool
}

// LayoutEnv names the environment variable that overrides how dense linear weights are laid out
// in memory: "auto" (the default), "stored" or "transposed". See WeightLayout.
const LayoutEnv = "HIPPO_WEIGHT_LAYOUT"

// WeightLayout says how dense linear weights (and a tied embedding that serves as the lm_head)
// are held: "stored" keeps the checkpoint's [out, in] and multiplies by its transposed view, as
// mlx-lm does; "transposed" copies each once at load into [in, out]. On MLX's CPU backend the
// BLAS product of one row by a transposed view repacks the whole matrix on every call, which
// costs 1.3-1.8x more than the same product by the [in, out] copy (the results are bit for bit
// equal), so "auto" transposes on the CPU and keeps the stored layout on a GPU, whose
// one-row kernels read [out, in] well. $HIPPO_WEIGHT_LAYOUT overrides "auto". Must run on the
// MLX thread.
func WeightLayout() (string, error) {
	d, err := mlx.DefaultDevice()
	if err != nil {
		return "", fmt.Errorf("model: weight layout: %w", err)
	}
	return ResolveLayout(os.Getenv(LayoutEnv), d.GPU)
}

// ResolveLayout turns a $HIPPO_WEIGHT_LAYOUT value (empty is "auto") into "stored" or
// "transposed" for a GPU or the CPU backend.
func ResolveLayout(v string, gpu bool) (string, error) {
	switch v {
	case "", "auto":
		if gpu {
			return "stored", nil
		}
		return "transposed", nil
	case "stored", "transposed":
		return v, nil
	default:
		return "", fmt.Errorf("model: weight layout %q (from $%s or --layout): use auto, stored or transposed", v, LayoutEnv)
	}
}

// HasLayer reports whether layer i is part of the range being loaded.
func (w *Weights) HasLayer(i int) bool { return i >= w.r.From && i < w.r.To }

// HasEmbed reports whether the embedding table is needed: on the first stage, or on the last
// when the lm_head is tied to it.
func (w *Weights) HasEmbed() bool { return w.r.From == 0 || w.tied && w.HasHead() }

// HasHead reports whether the final norm and lm_head are needed (the last stage).
func (w *Weights) HasHead() bool { return w.r.To == w.layers }

func openWeights(dir string, c *Config, compute mlx.DType) (*Weights, error) {
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	layout, err := WeightLayout()
	if err != nil {
		set.Close()
		return nil, err
	}
	w := &Weights{set: set, dir: dir, compute: compute, quant: c.Quantization, used: map[string]bool{},
		inMajor: layout == "transposed"}
	// mlx-community's multimodal checkpoints keep the text model under language_model.
	if !w.hasRaw("model.embed_tokens.weight") && w.hasRaw("language_model.model.embed_tokens.weight") {
		w.prefix = "language_model."
	}
	return w, nil
}

func (w *Weights) name(n string) string { return w.prefix + n }

func (w *Weights) hasRaw(n string) bool {
	_, ok := w.set.Info(n)
	return ok
}

// Has reports whether the checkpoint has tensor n.
func (w *Weights) Has(n string) bool { return w.hasRaw(w.name(n)) }

var stDTypes = map[safetensors.DType]mlx.DType{
	"F32": mlx.Float32, "F16": mlx.Float16, "BF16": mlx.BFloat16, "U32": mlx.Uint32,
	"I32": mlx.Int32, "U8": mlx.Uint8, "I8": mlx.Int8, "I64": mlx.Int64, "U16": mlx.Uint16,
	"I16": mlx.Int16, "U64": mlx.Uint64, "BOOL": mlx.Bool,
}

// raw loads tensor n as stored, checking its shape when want is given; floats become the
// compute dtype. The array is evaluated before returning so the conversion happens once.
func (w *Weights) raw(n string, want ...int) (mlx.Array, error) { return w.load(n, false, want...) }

// rawTransposed is raw for a 2-D tensor [rows, cols], returned as [cols, rows].
func (w *Weights) rawTransposed(n string, rows, cols int) (mlx.Array, error) {
	return w.load(n, true, rows, cols)
}

func (w *Weights) load(n string, transpose bool, want ...int) (mlx.Array, error) {
	full := w.name(n)
	info, ok := w.set.Info(full)
	if !ok {
		return mlx.Array{}, fmt.Errorf("model: %s: tensor %q is missing: %w (truncated download, or a config for a different model?)", w.dir, full, ErrCheckpoint)
	}
	if want != nil && !slices.Equal(info.Shape, want) {
		return mlx.Array{}, fmt.Errorf("model: %s: tensor %q has shape %v, the config implies %v: %w", w.dir, full, info.Shape, want, ErrCheckpoint)
	}
	dt, ok := stDTypes[info.DType]
	if !ok {
		return mlx.Array{}, fmt.Errorf("model: %s: tensor %q has dtype %s, which MLX cannot load", w.dir, full, info.DType)
	}
	data, err := w.set.Data(full)
	if err != nil {
		return mlx.Array{}, fmt.Errorf("model: %w", err)
	}
	shape := info.Shape
	if transpose {
		// Transposed here, in tiles, rather than by MLX, whose strided copy of a transpose
		// misses the cache on almost every element (seconds for a large embedding).
		data = transpose2D(data, shape[0], shape[1], dt.Size())
		shape = []int{shape[1], shape[0]}
	}
	s := mlx.NewScope()
	a := mlx.FromBytes(data, dt, shape...)
	if dt == mlx.Float32 || dt == mlx.Float16 || dt == mlx.BFloat16 {
		a = mlx.AsType(a, w.compute)
	}
	s.Keep(a)
	if err := s.Close(); err != nil {
		a.Free()
		return mlx.Array{}, fmt.Errorf("model: load %q: %w", full, err)
	}
	if err := mlx.Eval(a); err != nil {
		a.Free()
		return mlx.Array{}, fmt.Errorf("model: load %q: %w", full, err)
	}
	w.used[full] = true
	w.owned = append(w.owned, a)
	w.bytes += int64(a.NBytes())
	return a, nil
}

// Tensor loads a dense tensor with the given shape.
func (w *Weights) Tensor(n string, shape ...int) (mlx.Array, error) { return w.raw(n, shape...) }

// Linear loads prefix.weight (dense [out, in], or quantized with prefix.scales and prefix.biases)
// and prefix.bias when bias is set.
func (w *Weights) Linear(prefix string, out, in int, bias bool) (*Linear, error) {
	return w.linear(prefix, out, in, bias, w.inMajor)
}

// linear is Linear, holding a dense weight as [in, out] when inMajor is set.
func (w *Weights) linear(prefix string, out, in int, bias, inMajor bool) (*Linear, error) {
	l := &Linear{}
	var err error
	if w.Has(prefix + ".scales") {
		if w.quant == nil {
			return nil, fmt.Errorf("model: %s: %s is quantized but config.json has no quantization section: %w", w.dir, prefix, ErrCheckpoint)
		}
		q := w.quant.For(prefix)
		if in%q.GroupSize != 0 {
			return nil, fmt.Errorf("model: %s: %s input size %d is not a multiple of group size %d: %w", w.dir, prefix, in, q.GroupSize, ErrCheckpoint)
		}
		l.groupSize, l.bits = q.GroupSize, q.Bits
		if l.w, err = w.raw(prefix+".weight", out, in*q.Bits/32); err != nil {
			return nil, err
		}
		if l.scales, err = w.raw(prefix+".scales", out, in/q.GroupSize); err != nil {
			return nil, err
		}
		if l.biases, err = w.raw(prefix+".biases", out, in/q.GroupSize); err != nil {
			return nil, err
		}
	} else {
		if inMajor {
			if l.wT, err = w.rawTransposed(prefix+".weight", out, in); err != nil {
				return nil, err
			}
		} else {
			if l.w, err = w.raw(prefix+".weight", out, in); err != nil {
				return nil, err
			}
			// The transposed view is made once here rather than on every call.
			s := mlx.NewScope()
			l.wT = mlx.Transpose(l.w, 1, 0)
			s.Keep(l.wT)
			if err := s.Close(); err != nil {
				return nil, err
			}
			w.owned = append(w.owned, l.wT)
		}
	}
	if bias {
		if l.bias, err = w.raw(prefix+".bias", out); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Embedding loads an embedding table [vocab, dim], dense or quantized.
// A tied embedding that this stage also uses as its lm_head follows WeightLayout; one used only
// for lookups keeps its rows.
func (w *Weights) Embedding(prefix string, vocab, dim int) (*Embedding, error) {
	l, err := w.linear(prefix, vocab, dim, false, w.inMajor && w.tied && w.HasHead())
	if err != nil {
		return nil, err
	}
	return &Embedding{Linear: *l, compute: w.compute}, nil
}

// Unused lists tensors present in the checkpoint that no layer loaded, ignoring known leftovers
// (rotary inverse frequencies, vision towers of multimodal checkpoints) and, for a pipeline stage,
// the other stages' tensors.
func (w *Weights) Unused() []string {
	var out []string
	for _, n := range w.set.Names() {
		if !w.inRange(strings.TrimPrefix(n, w.prefix)) {
			continue
		}
		if w.used[n] || strings.Contains(n, "rotary_emb.inv_freq") || strings.HasPrefix(n, "vision_tower.") ||
			strings.HasPrefix(n, "multi_modal_projector.") || strings.HasPrefix(n, "model.vision_tower.") ||
			strings.HasPrefix(n, "model.multi_modal_projector.") || n == "lm_head.weight" && !w.used[n] {
			continue
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// inRange reports whether tensor n belongs to what this stage loads.
func (w *Weights) inRange(n string) bool {
	if rest, ok := strings.CutPrefix(n, "model.layers."); ok {
		var i int
		if _, err := fmt.Sscanf(rest, "%d.", &i); err == nil {
			return w.HasLayer(i) || i >= w.layers // a layer beyond the config belongs to no stage
		}
	}
	if strings.HasPrefix(n, "model.embed_tokens.") {
		return w.HasEmbed()
	}
	if strings.HasPrefix(n, "model.norm.") || strings.HasPrefix(n, "lm_head.") {
		return w.HasHead()
	}
	return true
}

// Bytes is the size of the loaded arrays in the compute dtype.
func (w *Weights) Bytes() int64 { return w.bytes }

// Free releases every loaded array and unmaps the files.
func (w *Weights) Free() {
	for _, a := range w.owned {
		a.Free()
	}
	w.owned = nil
	w.set.Close()
}

// Linear is y = x W^T (+ b), with W dense or affine-quantized.
type Linear struct {
	w, wT, scales, biases, bias mlx.Array
	groupSize, bits             int
}

// Forward applies the layer to x [..., in].
func (l *Linear) Forward(x mlx.Array) mlx.Array {
	var y mlx.Array
	if l.scales.Valid() {
		y = mlx.QuantizedMatmul(x, l.w, l.scales, l.biases, true, l.groupSize, l.bits)
	} else {
		y = mlx.Matmul(x, l.wT)
	}
	if l.bias.Valid() {
		y = mlx.Add(y, l.bias)
	}
	return y
}

// Embedding maps token ids to vectors; AsLinear reuses it as a tied lm_head.
type Embedding struct {
	Linear
	compute mlx.DType
}

// Forward gathers rows for ids (int32/uint32, any shape) and returns [..., dim].
func (e *Embedding) Forward(ids mlx.Array) mlx.Array {
	if !e.scales.Valid() && !e.w.Valid() {
		// Held as [dim, vocab] (WeightLayout): gather columns, then move dim last.
		g := mlx.Take(e.wT, ids, 1)
		axes := make([]int, 0, g.Ndim())
		for i := 1; i < g.Ndim(); i++ {
			axes = append(axes, i)
		}
		return mlx.Transpose(g, append(axes, 0)...)
	}
	if !e.scales.Valid() {
		return mlx.Take(e.w, ids, 0)
	}
	return mlx.Dequantize(mlx.Take(e.w, ids, 0), mlx.Take(e.scales, ids, 0), mlx.Take(e.biases, ids, 0),
		e.groupSize, e.bits, e.compute)
}

// AsLinear computes logits x E^T.
func (e *Embedding) AsLinear(x mlx.Array) mlx.Array { return e.Linear.Forward(x) }

// transpose2D returns the row-major [cols, rows] transpose of src, a row-major [rows, cols]
// matrix of size-byte elements.
func transpose2D(src []byte, rows, cols, size int) []byte {
	dst := make([]byte, len(src))
	switch size {
	case 1:
		transposeTiles(src, dst, rows, cols)
	case 2:
		transposeTiles(elems[[2]byte](src), elems[[2]byte](dst), rows, cols)
	case 4:
		transposeTiles(elems[[4]byte](src), elems[[4]byte](dst), rows, cols)
	case 8:
		transposeTiles(elems[[8]byte](src), elems[[8]byte](dst), rows, cols)
	default:
		panic(fmt.Sprintf("model: transpose of %d-byte elements", size))
	}
	return dst
}

// elems views b as elements of type E, a byte array, which has no alignment to respect.
func elems[E any](b []byte) []E {
	var e E
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*E)(unsafe.Pointer(&b[0])), len(b)/int(unsafe.Sizeof(e)))
}

// transposeTiles writes the transpose of src [rows, cols] into dst [cols, rows]. It copies 64 x 64
// tiles, so that reads and writes both stay within a few cache lines, on as many goroutines as
// there are CPUs.
func transposeTiles[E any](src, dst []E, rows, cols int) {
	const tile = 64
	var wg sync.WaitGroup
	next := make(chan int, (rows+tile-1)/tile)
	for r := 0; r < rows; r += tile {
		next <- r
	}
	close(next)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r0 := range next {
				r1 := min(r0+tile, rows)
				for c0 := 0; c0 < cols; c0 += tile {
					c1 := min(c0+tile, cols)
					for r := r0; r < r1; r++ {
						row := src[r*cols : r*cols+c1]
						for c := c0; c < c1; c++ {
							dst[c*rows+r] = row[c]
						}
					}
				}
			}
		}()
	}
	wg.Wait()
}
