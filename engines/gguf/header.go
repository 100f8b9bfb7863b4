// Package gguf reads GGUF files (llama.cpp's checkpoint format) and converts the ones Hippo can
// run into mlx-community-style checkpoint directories: config.json with a quantization block,
// safetensors in MLX's affine layout, tokenizer.json and tokenizer_config.json.
//
// The header (metadata and tensor table) is parsed here in Go; the tensor data is read by MLX's
// own GGUF loader (mlx.LoadGGUF), which maps Q4_0, Q4_1 and Q8_0 blocks to MLX's affine
// quantization without a dequantization step.
package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// ErrFormat reports a file that is not a well-formed GGUF file.
var ErrFormat = errors.New("not a valid GGUF file")

// ErrUnsupported reports a GGUF file Hippo cannot convert (architecture, tensor type, tokenizer).
var ErrUnsupported = errors.New("unsupported GGUF content")

// Type is a GGML tensor type.
type Type uint32

// The GGML tensor types, numbered as in ggml.h.
const (
	F32  Type = 0
	F16  Type = 1
	Q4_0 Type = 2
	Q4_1 Type = 3
	Q8_0 Type = 8
	BF16 Type = 30
)

var typeNames = map[Type]string{
	0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
	10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
	17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
	24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
	35: "TQ2_0", 39: "MXFP4",
}

// String is the name llama.cpp uses for the type.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// Tensor describes one tensor of the file. Shape is in row-major order (outermost first), the
// reverse of GGML's ne[] order, so a matrix is [rows, columns] as in safetensors.
type Tensor struct {
	Name   string
	Type   Type
	Shape  []int
	Offset uint64
}

// File is a parsed GGUF header.
type File struct {
	Path     string
	Version  uint32
	Metadata map[string]any // values: uint8..int64, float32/64, bool, string, or []any of those
	Tensors  []Tensor
}

// Limits against hostile headers: far above any real model, far below what would exhaust memory.
const (
	maxString  = 1 << 24
	maxArray   = 1 << 24
	maxKVs     = 1 << 16
	maxTensors = 1 << 20
	maxDims    = 4
)

// Open reads the header of the GGUF file at path.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	defer f.Close()
	g, err := Read(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("gguf: %s: %w", path, err)
	}
	g.Path = path
	return g, nil
}

// Read parses a GGUF header from r.
func Read(r io.Reader) (*File, error) {
	d := &decoder{r: r}
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return nil, fmt.Errorf("%w: the file does not start with \"GGUF\"", ErrFormat)
	}
	g := &File{Metadata: map[string]any{}}
	g.Version = d.u32()
	if d.err == nil && (g.Version < 2 || g.Version > 3) {
		return nil, fmt.Errorf("%w: version %d (Hippo reads versions 2 and 3)", ErrUnsupported, g.Version)
	}
	nTensors, nKV := d.u64(), d.u64()
	if d.err != nil {
		return nil, d.fail("header")
	}
	if nTensors > maxTensors || nKV > maxKVs {
		return nil, fmt.Errorf("%w: %d tensors and %d metadata entries is implausible", ErrFormat, nTensors, nKV)
	}
	for i := uint64(0); i < nKV; i++ {
		key := d.str()
		v := d.value(d.u32(), 0)
		if d.err != nil {
			return nil, d.fail(fmt.Sprintf("metadata entry %d (%q)", i, key))
		}
		g.Metadata[key] = v
	}
	for i := uint64(0); i < nTensors; i++ {
		t := Tensor{Name: d.str()}
		nd := d.u32()
		if d.err != nil {
			// Stop before sizing anything from a count that was never read.
			return nil, d.fail(fmt.Sprintf("tensor %d", i))
		}
		if nd > maxDims {
			return nil, fmt.Errorf("%w: tensor %q has %d dimensions", ErrFormat, t.Name, nd)
		}
		t.Shape = make([]int, nd)
		for k := int(nd) - 1; k >= 0; k-- {
			n := d.u64()
			if n > math.MaxInt32 {
				return nil, fmt.Errorf("%w: tensor %q has a dimension of %d", ErrFormat, t.Name, n)
			}
			t.Shape[k] = int(n)
		}
		t.Type = Type(d.u32())
		t.Offset = d.u64()
		if d.err != nil {
			return nil, d.fail(fmt.Sprintf("tensor %d", i))
		}
		g.Tensors = append(g.Tensors, t)
	}
	return g, nil
}

type decoder struct {
	r   io.Reader
	err error
	buf [8]byte
}

func (d *decoder) fail(what string) error {
	if errors.Is(d.err, io.EOF) || errors.Is(d.err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated in %s", ErrFormat, what)
	}
	return fmt.Errorf("%s: %w", what, d.err)
}

func (d *decoder) read(n int) []byte {
	if d.err != nil {
		return d.buf[:n]
	}
	_, d.err = io.ReadFull(d.r, d.buf[:n])
	return d.buf[:n]
}

func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.read(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.read(8)) }

func (d *decoder) str() string {
	n := d.u64()
	if d.err != nil {
		return ""
	}
	if n > maxString {
		d.err = fmt.Errorf("%w: a string of %d bytes", ErrFormat, n)
		return ""
	}
	// Grow with the data actually read: a claimed length must not allocate before the bytes exist.
	var b strings.Builder
	if _, err := io.CopyN(&b, d.r, int64(n)); err != nil {
		d.err = err
	}
	return b.String()
}

// GGUF metadata value types.
const (
	tU8 = iota
	tI8
	tU16
	tI16
	tU32
	tI32
	tF32
	tBool
	tString
	tArray
	tU64
	tI64
	tF64
)

func (d *decoder) value(typ uint32, depth int) any {
	if d.err != nil {
		return nil
	}
	switch typ {
	case tU8:
		return d.read(1)[0]
	case tI8:
		return int8(d.read(1)[0])
	case tU16:
		return binary.LittleEndian.Uint16(d.read(2))
	case tI16:
		return int16(binary.LittleEndian.Uint16(d.read(2)))
	case tU32:
		return d.u32()
	case tI32:
		return int32(d.u32())
	case tF32:
		return math.Float32frombits(d.u32())
	case tBool:
		return d.read(1)[0] != 0
	case tString:
		return d.str()
	case tU64:
		return d.u64()
	case tI64:
		return int64(d.u64())
	case tF64:
		return math.Float64frombits(d.u64())
	case tArray:
		if depth > 2 {
			d.err = fmt.Errorf("%w: arrays nested too deeply", ErrFormat)
			return nil
		}
		et, n := d.u32(), d.u64()
		if d.err != nil {
			return nil
		}
		if n > maxArray {
			d.err = fmt.Errorf("%w: an array of %d entries", ErrFormat, n)
			return nil
		}
		out := make([]any, 0, min(n, 1<<16))
		for i := uint64(0); i < n && d.err == nil; i++ {
			out = append(out, d.value(et, depth+1))
		}
		return out
	}
	d.err = fmt.Errorf("%w: unknown metadata value type %d", ErrFormat, typ)
	return nil
}

// Int returns metadata key as an integer.
func (g *File) Int(key string) (int, bool) {
	return toInt(g.Metadata[key])
}

func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case uint8:
		return int(x), true
	case int8:
		return int(x), true
	case uint16:
		return int(x), true
	case int16:
		return int(x), true
	case uint32:
		return int(x), true
	case int32:
		return int(x), true
	case uint64:
		if x > math.MaxInt32 {
			return 0, false
		}
		return int(x), true
	case int64:
		if x > math.MaxInt32 || x < math.MinInt32 {
			return 0, false
		}
		return int(x), true
	}
	return 0, false
}

// Float returns metadata key as a float.
func (g *File) Float(key string) (float64, bool) {
	switch x := g.Metadata[key].(type) {
	case float32:
		// The shortest decimal that round-trips the float32 (1e-05, not 9.999999747378752e-06),
		// as the Hugging Face config the GGUF file was made from had it.
		f, err := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return f, err == nil
	case float64:
		return x, true
	}
	n, ok := g.Int(key)
	return float64(n), ok
}

// String returns metadata key as a string.
func (g *File) String(key string) (string, bool) {
	s, ok := g.Metadata[key].(string)
	return s, ok
}

// Bool returns metadata key as a bool.
func (g *File) Bool(key string) (bool, bool) {
	b, ok := g.Metadata[key].(bool)
	return b, ok
}

// Strings returns metadata key as a list of strings.
func (g *File) Strings(key string) ([]string, bool) {
	l, ok := g.Metadata[key].([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, len(l))
	for i, v := range l {
		if out[i], ok = v.(string); !ok {
			return nil, false
		}
	}
	return out, true
}

// Ints returns metadata key as a list of integers.
func (g *File) Ints(key string) ([]int, bool) {
	l, ok := g.Metadata[key].([]any)
	if !ok {
		return nil, false
	}
	out := make([]int, len(l))
	for i, v := range l {
		if out[i], ok = toInt(v); !ok {
			return nil, false
		}
	}
	return out, true
}

// need returns an error naming a missing or mistyped required key.
func needErr(key, want string) error {
	return fmt.Errorf("%w: metadata %q is missing or not %s", ErrUnsupported, key, want)
}

// Architecture is general.architecture, e.g. "llama".
func (g *File) Architecture() string {
	a, _ := g.String("general.architecture")
	return strings.TrimSpace(a)
}
