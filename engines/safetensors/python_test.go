package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/internal/testenv"
)

// These tests hold the package to the reference: files Hippo writes load in the Python safetensors
// library and in MLX, files they write load here, and the writer's bytes equal the reference
// writer's. They need the venv that `just setup` makes, and fail without it: CI runs them.

// python runs script with the repository's venv interpreter and returns its stdout.
func python(t *testing.T, script string, args ...string) []byte {
	t.Helper()
	py := testenv.Python(t)
	cmd := exec.Command(py, append([]string{"-c", script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.Bytes())
	}
	return out
}

// pyTensor is a tensor as the Python scripts report it.
type pyTensor struct {
	DType  string    `json:"dtype"`
	Shape  []int     `json:"shape"`
	Values []float64 `json:"values"`
}

func TestPythonReadsHippo(t *testing.T) {
	dir := t.TempDir()
	// Values exact in every dtype used, so the comparison can be exact too.
	f32 := []float64{1, -2.5, 0.15625, 65536, -0.0078125, 3}
	half := []float64{1, -2, 0.5, 65504, -0.25, 1024}
	bf16 := []float64{1, -2, 0.5, math.Ldexp(1.5, 100), -0.25, 1024} // 2^100: beyond float16's range
	u32 := []float64{0, 1, 4294967295}
	var f32Data, f16Data, bf16Data, u32Data []byte
	for _, v := range f32 {
		f32Data = binary.LittleEndian.AppendUint32(f32Data, math.Float32bits(float32(v)))
	}
	for _, v := range half {
		f16Data = binary.LittleEndian.AppendUint16(f16Data, float16(v))
	}
	for _, v := range bf16 {
		bf16Data = binary.LittleEndian.AppendUint16(bf16Data, uint16(math.Float32bits(float32(v))>>16))
	}
	for _, v := range u32 {
		u32Data = binary.LittleEndian.AppendUint32(u32Data, uint32(v))
	}
	common := []tensor{
		{TensorInfo{Name: "f32", DType: F32, Shape: []int{2, 3}}, f32Data},
		{TensorInfo{Name: "f16", DType: F16, Shape: []int{3, 2}}, f16Data},
		{TensorInfo{Name: "u32", DType: U32, Shape: []int{3}}, u32Data},
		{TensorInfo{Name: "scalar", DType: F32, Shape: []int{}}, f32Data[4:8]},
	}
	meta := map[string]string{"format": "mlx", "producer": "hippo"}
	plain := filepath.Join(dir, "plain.safetensors")
	writeTensors(t, plain, common, meta)
	withBF16 := filepath.Join(dir, "bf16.safetensors")
	writeTensors(t, withBF16, append(common, tensor{TensorInfo{Name: "bf16", DType: BF16, Shape: []int{6}}, bf16Data}), meta)

	out := python(t, `
import json, sys
import numpy as np
import mlx.core as mx
from safetensors import safe_open
from safetensors.numpy import load_file

def values(v):
    if isinstance(v, mx.array):
        # NumPy has no bfloat16; float32 holds every bfloat16 value exactly.
        v = np.array(v.astype(mx.float32) if v.dtype == mx.bfloat16 else v)
    return v.astype(np.float64).ravel().tolist()

def report(arrays, metadata):
    return {"tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": values(v)}
                        for k, v in arrays.items()},
            "metadata": metadata}

plain, bf16 = sys.argv[1:]
with safe_open(plain, framework="numpy") as f:
    numpy_report = report(load_file(plain), f.metadata())
mlx_report = report(*mx.load(bf16, return_metadata=True))
json.dump({"numpy": numpy_report, "mlx": mlx_report}, sys.stdout)
`, plain, withBF16)

	var got struct {
		Numpy, MLX struct {
			Tensors  map[string]pyTensor `json:"tensors"`
			Metadata map[string]string   `json:"metadata"`
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode Python report %q: %v", out, err)
	}
	want := map[string]pyTensor{
		"f32":    {"float32", []int{2, 3}, f32},
		"f16":    {"float16", []int{3, 2}, half},
		"u32":    {"uint32", []int{3}, u32},
		"scalar": {"float32", []int{}, f32[1:2]},
	}
	if diff := cmp.Diff(got.Numpy.Tensors, want); diff != "" {
		t.Errorf("safetensors.numpy.load_file diff (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(got.Numpy.Metadata, meta); diff != "" {
		t.Errorf("safe_open metadata diff (-got +want):\n%s", diff)
	}
	want["bf16"] = pyTensor{"bfloat16", []int{6}, bf16}
	for name, tn := range want {
		tn.DType = "mlx.core." + tn.DType
		want[name] = tn
	}
	if diff := cmp.Diff(got.MLX.Tensors, want); diff != "" {
		t.Errorf("mlx.core.load diff (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(got.MLX.Metadata, meta); diff != "" {
		t.Errorf("mlx.core.load metadata diff (-got +want):\n%s", diff)
	}
}

func TestHippoReadsPython(t *testing.T) {
	dir := t.TempDir()
	numpyFile := filepath.Join(dir, "numpy.safetensors")
	mlxFile := filepath.Join(dir, "mlx.safetensors")
	python(t, `
import sys
import numpy as np
import mlx.core as mx
from safetensors.numpy import save_file

numpy_file, mlx_file = sys.argv[1:]
save_file({
    "model.embed_tokens.weight": (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3),
    "half": np.array([[1, -2], [0.5, 65504]], dtype=np.float16),
    "ids": np.array([7, 0, 4294967295], dtype=np.uint32),
    "step": np.array(42, dtype=np.int64),
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 4), dtype=np.float32),
}, numpy_file, metadata={"format": "np", "source": "python"})
mx.save_safetensors(mlx_file, {"w": mx.array([1, -2.5, 0.15625], dtype=mx.bfloat16)}, metadata={"format": "mlx"})
`, numpyFile, mlxFile)

	tests := []struct {
		name     string
		path     string
		want     map[string]pyTensor // Values decoded from the bytes by the test
		wantMeta map[string]string
	}{
		{
			name: "safetensors.numpy.save_file", path: numpyFile,
			want: map[string]pyTensor{
				"model.embed_tokens.weight": {"F32", []int{2, 3}, []float64{-1, -0.5, 0, 0.5, 1, 1.5}},
				"half":                      {"F16", []int{2, 2}, []float64{1, -2, 0.5, 65504}},
				"ids":                       {"U32", []int{3}, []float64{7, 0, 4294967295}},
				"step":                      {"I64", []int{}, []float64{42}},
				"mask":                      {"BOOL", []int{3}, []float64{1, 0, 1}},
				"empty":                     {"F32", []int{0, 4}, nil},
			},
			wantMeta: map[string]string{"format": "np", "source": "python"},
		},
		{
			name: "mlx.core.save_safetensors", path: mlxFile,
			want:     map[string]pyTensor{"w": {"BF16", []int{3}, []float64{1, -2.5, 0.15625}}},
			wantMeta: map[string]string{"format": "mlx"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Open(tc.path)
			if err != nil {
				t.Fatalf("Open() error = %v", err)
			}
			defer f.Close()
			got := map[string]pyTensor{}
			for _, ti := range f.Tensors() {
				data, err := f.Data(ti.Name)
				if err != nil {
					t.Fatalf("Data(%q) error = %v", ti.Name, err)
				}
				values, err := decode(ti.DType, data)
				if err != nil {
					t.Fatalf("tensor %q: %v", ti.Name, err)
				}
				got[ti.Name] = pyTensor{string(ti.DType), ti.Shape, values}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("tensors diff (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(f.Metadata(), tc.wantMeta); diff != "" {
				t.Errorf("Metadata() diff (-got +want):\n%s", diff)
			}
		})
	}
}

// TestWriterMatchesReference compares the writer's bytes with the reference library's
// serialization of the same tensors, one of every dtype.
func TestWriterMatchesReference(t *testing.T) {
	pyNames := map[DType]string{
		BOOL: "bool", U8: "uint8", I8: "int8", F8_E5M2: "float8_e5m2", F8_E4M3: "float8_e4m3fn",
		F8_E8M0: "float8_e8m0fnu", F8_E4M3FNUZ: "float8_e4m3fnuz", F8_E5M2FNUZ: "float8_e5m2fnuz",
		I16: "int16", U16: "uint16", F16: "float16", BF16: "bfloat16", I32: "int32", U32: "uint32",
		F32: "float32", C64: "complex64", F64: "float64", I64: "int64", U64: "uint64",
	}
	tensors := sampleTensors()
	for _, d := range dtypes {
		// Odd element counts misalign whatever follows unless the layout orders by element size.
		n := 3
		data := make([]byte, n*d.size)
		for i := range data {
			data[i] = byte(i*7 + len(d.dtype))
		}
		tensors = append(tensors, tensor{TensorInfo{Name: "all." + string(d.dtype), DType: d.dtype, Shape: []int{1, n}}, data})
	}
	// One key: the reference writes metadata in Rust HashMap order, which varies from run to run.
	meta := map[string]string{"format": "<&> \"é\""}
	path := filepath.Join(t.TempDir(), "model.safetensors")
	writeTensors(t, path, tensors, meta)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	type spec struct {
		DType string `json:"dtype"`
		Shape []int  `json:"shape"`
		Data  string `json:"data"` // hex
	}
	specs := map[string]spec{}
	for _, tn := range tensors {
		specs[tn.info.Name] = spec{pyNames[tn.info.DType], tn.info.Shape, hex.EncodeToString(tn.data)}
	}
	input, err := json.Marshal(map[string]any{"tensors": specs, "metadata": meta})
	if err != nil {
		t.Fatal(err)
	}
	out := python(t, `
import json, sys
import numpy as np
from safetensors import serialize
from safetensors._safetensors_rust import TensorSpec

req = json.loads(sys.argv[1])
keep = []
specs = {}
for name, s in req["tensors"].items():
    buf = np.frombuffer(bytes.fromhex(s["data"]), dtype=np.uint8).copy()
    keep.append(buf)
    specs[name] = TensorSpec(dtype=s["dtype"], shape=s["shape"], data_ptr=buf.ctypes.data, data_len=buf.nbytes)
sys.stdout.buffer.write(bytes(serialize(specs, metadata=req["metadata"])))
`, string(input))
	if !bytes.Equal(got, out) {
		n := min(len(got), len(out))
		i := 0
		for i < n && got[i] == out[i] {
			i++
		}
		t.Errorf("writer output differs from the reference at byte %d:\ngot  %q\nwant %q", i, got[max(0, i-40):min(len(got), i+80)], out[max(0, i-40):min(len(out), i+80)])
	}
}

// decode converts little-endian tensor bytes to float64 for comparisons.
func decode(d DType, data []byte) ([]float64, error) {
	var out []float64
	for i := 0; i < len(data); i += d.Size() {
		b := data[i:]
		switch d {
		case F32:
			out = append(out, float64(math.Float32frombits(binary.LittleEndian.Uint32(b))))
		case BF16:
			out = append(out, float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b))<<16)))
		case F16:
			out = append(out, fromFloat16(binary.LittleEndian.Uint16(b)))
		case U32:
			out = append(out, float64(binary.LittleEndian.Uint32(b)))
		case I64:
			out = append(out, float64(int64(binary.LittleEndian.Uint64(b))))
		case BOOL, U8:
			out = append(out, float64(b[0]))
		default:
			return nil, errors.New("decode: unsupported dtype " + string(d))
		}
	}
	return out, nil
}

// float16 converts v, which must be a normal half-precision value or zero, to IEEE half bits.
func float16(v float64) uint16 {
	if v == 0 {
		return 0
	}
	bits := math.Float32bits(float32(v))
	sign := uint16(bits>>16) & 0x8000
	exp := int(bits>>23&0xff) - 127 + 15
	return sign | uint16(exp)<<10 | uint16(bits>>13&0x3ff)
}

// fromFloat16 converts IEEE half bits of a normal value or zero to float64.
func fromFloat16(h uint16) float64 {
	if h&0x7fff == 0 {
		return 0
	}
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10&0x1f) - 15
	return sign * (1 + float64(h&0x3ff)/1024) * math.Pow(2, float64(exp))
}

// TestReferenceAgrees runs the reference library's reader over the test files: it must accept
// every file ParseHeader accepts and reject every file ParseHeader rejects, except where Hippo is
// deliberately stricter.
func TestReferenceAgrees(t *testing.T) {
	// Files the reference library accepts and Hippo refuses, and why.
	stricter := map[string]string{
		"leading whitespace":     "the format says the header starts with '{'",
		"duplicate metadata key": "serde keeps the last value silently",
		"sub-byte dtype":         "Hippo does not support sub-byte dtypes",
		"duplicate tensor names": "serde keeps the last entry silently",
	}
	dir := t.TempDir()
	want := map[string]bool{} // file -> whether the reference should accept it
	for i, tc := range corruptCases() {
		name := fmt.Sprintf("corrupt %02d %s", i, strings.ReplaceAll(tc.name, "/", "-"))
		_, isStricter := stricter[tc.name]
		want[name] = isStricter
		writeCase(t, dir, name, tc.data)
	}
	for i, tc := range validCases() {
		name := fmt.Sprintf("valid %02d %s", i, strings.ReplaceAll(tc.name, "/", "-"))
		want[name] = true
		writeCase(t, dir, name, tc.data())
	}
	out := python(t, `
import json, os, sys
from safetensors import deserialize
verdicts = {}
for name in sorted(os.listdir(sys.argv[1])):
    with open(os.path.join(sys.argv[1], name), "rb") as f:
        data = f.read()
    try:
        deserialize(data)
        verdicts[name] = True
    except Exception as e:
        verdicts[name] = False
json.dump(verdicts, sys.stdout)
`, dir)
	var got map[string]bool
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode Python verdicts %q: %v", out, err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("reference library acceptance diff (-got +want):\n%s", diff)
	}
}

// writeCase writes data to dir/name.
func writeCase(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}
