package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// tensor is a declared tensor with its data.
type tensor struct {
	info TensorInfo
	data []byte
}

// f32s encodes float32 values little-endian.
func f32s(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// sampleTensors mixes dtypes, a scalar, an empty tensor and an odd-sized one so that the layout
// has to reorder them for alignment.
func sampleTensors() []tensor {
	return []tensor{
		{TensorInfo{Name: "model.norm.weight", DType: BF16, Shape: []int{3}}, []byte{0x80, 0x3f, 0x00, 0x40, 0x40, 0xc0}},
		{TensorInfo{Name: "lm_head.weight", DType: F32, Shape: []int{2, 2}}, f32s(1, -2, 0.5, 1e-3)},
		{TensorInfo{Name: "mask", DType: U8, Shape: []int{5}}, []byte{1, 0, 1, 1, 0}},
		{TensorInfo{Name: "step", DType: I64, Shape: []int{}}, binary.LittleEndian.AppendUint64(nil, 42)},
		{TensorInfo{Name: "empty", DType: F16, Shape: []int{0, 7}}, []byte{}},
		{TensorInfo{Name: "ids", DType: U32, Shape: []int{3}}, []byte{1, 0, 0, 0, 2, 0, 0, 0, 255, 255, 255, 255}},
	}
}

// writeTensors writes tensors to path, in reverse order to show that the order does not matter.
func writeTensors(t testing.TB, path string, tensors []tensor, meta map[string]string) {
	t.Helper()
	infos := make([]TensorInfo, len(tensors))
	for i, tn := range tensors {
		infos[i] = tn.info
	}
	w, err := Create(path, infos, meta)
	if err != nil {
		t.Fatalf("Create() error = %v", err)
	}
	for i := len(tensors) - 1; i >= 0; i-- {
		if err := w.Write(tensors[i].info.Name, tensors[i].data); err != nil {
			t.Fatalf("Write(%q) error = %v", tensors[i].info.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
}

// writtenFile returns the bytes of a file of sampleTensors made by the writer.
func writtenFile(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "model.safetensors")
	writeTensors(t, path, sampleTensors(), map[string]string{"format": "mlx", "hippo": "synth"})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestWriteOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	meta := map[string]string{"format": "mlx", "note": "<&> \"quoted\" é"}
	tensors := sampleTensors()
	writeTensors(t, path, tensors, meta)

	f, err := Open(path)
	if err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	defer f.Close()

	// Data order: largest element first, then by name, as the reference writer lays it out.
	var names []string
	for _, ti := range f.Tensors() {
		names = append(names, ti.Name)
		if size := int64(ti.DType.Size()); ti.Offset%size != 0 {
			t.Errorf("tensor %q: Offset = %d; want a multiple of %d (aligned)", ti.Name, ti.Offset, size)
		}
	}
	wantNames := []string{"step", "lm_head.weight", "ids", "model.norm.weight", "empty", "mask"}
	if diff := cmp.Diff(names, wantNames); diff != "" {
		t.Errorf("Tensors() names diff (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(f.Metadata(), meta); diff != "" {
		t.Errorf("Metadata() diff (-got +want):\n%s", diff)
	}
	for _, tn := range tensors {
		got, err := f.Data(tn.info.Name)
		if err != nil {
			t.Fatalf("Data(%q) error = %v", tn.info.Name, err)
		}
		if !bytes.Equal(got, tn.data) {
			t.Errorf("Data(%q) = %v; want %v", tn.info.Name, got, tn.data)
		}
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(raw); n%8 != 0 || raw[8+n-1] != ' ' && raw[8+n-1] != '}' {
		t.Errorf("header length = %d, ends %q; want a multiple of 8 padded with spaces", n, raw[8+n-1])
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries; want only model.safetensors (no temporary files)", len(entries))
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("Stat() = %v, %v; want mode 0644", st.Mode(), err)
	}

	if _, err := f.Data("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `tensor "nope": not among the file's 6 tensors`) {
		t.Errorf("Data(%q) error = %v; want ErrNotFound naming the tensor", "nope", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	if _, err := f.Data("mask"); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Data() after Close error = %v; want os.ErrClosed", err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close() error = %v; want os.ErrClosed", err)
	}
}

func TestWriteEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.safetensors")
	writeTensors(t, path, nil, nil)
	f, err := Open(path)
	if err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	defer f.Close()
	if got := len(f.Tensors()); got != 0 {
		t.Errorf("len(Tensors()) = %d; want 0", got)
	}
	raw, _ := os.ReadFile(path)
	if want := "\x08\x00\x00\x00\x00\x00\x00\x00{}      "; string(raw) != want {
		t.Errorf("file = %q; want %q", raw, want)
	}
}

func TestCreateErrors(t *testing.T) {
	tests := []struct {
		name    string
		tensors []TensorInfo
		meta    map[string]string
		msg     string
	}{
		{"duplicate name", []TensorInfo{{Name: "a", DType: F32}, {Name: "a", DType: F32}}, nil, `tensor "a" declared twice`},
		{"reserved name", []TensorInfo{{Name: "__metadata__", DType: F32}}, nil, `"__metadata__" is reserved`},
		{"invalid UTF-8 name", []TensorInfo{{Name: "a\xff", DType: F32}}, nil, `name is not valid UTF-8`},
		{"unknown dtype", []TensorInfo{{Name: "a", DType: "F33"}}, nil, `tensor "a": unknown dtype "F33"`},
		{"sub-byte dtype", []TensorInfo{{Name: "a", DType: "F4"}}, nil, `tensor "a": unknown dtype "F4"`},
		{"negative dimension", []TensorInfo{{Name: "a", DType: F32, Shape: []int{2, -1}}}, nil, `tensor "a": shape [2 -1] has a negative dimension`},
		{"overflowing shape", []TensorInfo{{Name: "a", DType: F32, Shape: []int{math.MaxInt32, math.MaxInt32, 4}}}, nil, `tensor "a": shape [2147483647 2147483647 4] of F32 overflows`},
		{"overflowing total", []TensorInfo{{Name: "a", DType: U16, Shape: []int{math.MaxInt32, math.MaxInt32}}, {Name: "b", DType: U16, Shape: []int{math.MaxInt32, math.MaxInt32}}}, nil, "tensors total more than 2^63 bytes"},
		{"invalid UTF-8 metadata", nil, map[string]string{"k": "\xff"}, `metadata "k": "\xff": not valid UTF-8`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w, err := Create(filepath.Join(dir, "x.safetensors"), tc.tensors, tc.meta)
			if err == nil {
				w.Close()
				t.Fatalf("Create() error = nil; want %q", tc.msg)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Create() error = %q; want it to contain %q", err, tc.msg)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("directory holds %d entries after a failed Create; want 0", len(entries))
			}
		})
	}
}

func TestWriterErrors(t *testing.T) {
	infos := []TensorInfo{{Name: "a", DType: F32, Shape: []int{2}}, {Name: "b", DType: U8, Shape: []int{3}}}
	tests := []struct {
		name     string
		writes   []tensor // info.Name and data only
		writeErr string   // the error of the last write
		want     error    // the sentinel of the last write's error, if any
		closeErr string
	}{
		{name: "unknown tensor", writes: []tensor{{TensorInfo{Name: "c"}, []byte{1}}}, writeErr: `tensor "c": not declared to Create`, want: ErrNotFound,
			closeErr: `2 of 2 tensors never written: "a", "b"; file discarded`},
		{name: "wrong length", writes: []tensor{{TensorInfo{Name: "a"}, make([]byte, 7)}}, writeErr: `tensor "a": got 7 bytes; want 8 for shape [2] of F32`,
			closeErr: `2 of 2 tensors never written`},
		{name: "written twice", writes: []tensor{{TensorInfo{Name: "b"}, make([]byte, 3)}, {TensorInfo{Name: "b"}, make([]byte, 3)}}, writeErr: `tensor "b": written twice`,
			closeErr: `1 of 2 tensors never written: "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "x.safetensors")
			w, err := Create(path, infos, nil)
			if err != nil {
				t.Fatalf("Create() error = %v", err)
			}
			for i, wr := range tc.writes {
				err = w.Write(wr.info.Name, wr.data)
				if i < len(tc.writes)-1 && err != nil {
					t.Fatalf("Write(%q) error = %v", wr.info.Name, err)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.writeErr) {
				t.Errorf("Write() error = %v; want it to contain %q", err, tc.writeErr)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Write() error = %v; want it to wrap %v", err, tc.want)
			}
			if err := w.Close(); err == nil || !strings.Contains(err.Error(), tc.closeErr) {
				t.Errorf("Close() error = %v; want it to contain %q", err, tc.closeErr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("directory holds %d entries after a failed Close; want 0", len(entries))
			}
			if err := w.Write("a", make([]byte, 8)); !errors.Is(err, os.ErrClosed) {
				t.Errorf("Write() after Close error = %v; want os.ErrClosed", err)
			}
		})
	}
}

func TestCreateMissingDir(t *testing.T) {
	_, err := Create(filepath.Join(t.TempDir(), "no", "x.safetensors"), nil, nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create() error = %v; want os.ErrNotExist", err)
	}
}
