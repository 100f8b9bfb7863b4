package safetensors

import (
	"bytes"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseHeader checks that ParseHeader never panics, that every error is one of its documented
// kinds, and that every accepted file satisfies the format's invariants and survives a round trip
// through the writer's header encoder.
func FuzzParseHeader(f *testing.F) {
	for _, tc := range corruptCases() {
		f.Add(tc.data)
	}
	for _, tc := range validCases() {
		f.Add(tc.data())
	}
	// A file from the writer, with metadata and several dtypes.
	f.Add(writtenFile(f))

	f.Fuzz(func(t *testing.T, data []byte) {
		size := int64(len(data))
		infos, meta, err := ParseHeader(bytes.NewReader(data), size)
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("ParseHeader() error = %v; want ErrTruncated, ErrCorrupt or ErrUnsupported", err)
			}
			if !strings.HasPrefix(err.Error(), "safetensors: ") {
				t.Fatalf("ParseHeader() error = %q; want prefix \"safetensors: \"", err)
			}
			return
		}
		if meta == nil {
			t.Fatal("ParseHeader() metadata = nil; want a map")
		}
		checkLayout(t, infos, size)

		// The writer's encoding of what was read must read back the same.
		rel := slices.Clone(infos)
		var base int64
		if len(rel) > 0 {
			base = rel[0].Offset
		}
		for i := range rel {
			rel[i].Offset -= base
		}
		header, err := encodeHeader(rel, meta)
		if err != nil {
			t.Fatalf("encodeHeader() error = %v", err)
		}
		var bufLen int64
		if len(infos) > 0 {
			bufLen = size - base
		}
		again := build(string(header), make([]byte, bufLen))
		infos2, meta2, err := ParseHeader(bytes.NewReader(again), int64(len(again)))
		if err != nil {
			t.Fatalf("ParseHeader(encodeHeader()) error = %v for header %q", err, header)
		}
		shift := func(infos []TensorInfo, by int64) []TensorInfo {
			out := slices.Clone(infos)
			for i := range out {
				out[i].Offset -= by
			}
			return out
		}
		newBase := int64(8 + len(header))
		if diff := cmp.Diff(shift(infos2, newBase), rel); diff != "" {
			t.Errorf("round trip infos diff (-got +want):\n%s", diff)
		}
		if diff := cmp.Diff(meta2, meta); diff != "" {
			t.Errorf("round trip metadata diff (-got +want):\n%s", diff)
		}
	})
}

// checkLayout checks the invariants of an accepted file of size bytes: known dtypes, unique names,
// lengths that match the shapes, and tensors that tile the end of the file in order.
func checkLayout(t *testing.T, infos []TensorInfo, size int64) {
	t.Helper()
	names := map[string]bool{}
	next := int64(-1)
	for _, ti := range infos {
		if names[ti.Name] {
			t.Fatalf("tensor %q listed twice", ti.Name)
		}
		names[ti.Name] = true
		if ti.DType.Size() == 0 {
			t.Fatalf("tensor %q: dtype %q accepted; want a known dtype", ti.Name, ti.DType)
		}
		if ti.Shape == nil {
			t.Fatalf("tensor %q: Shape = nil; want non-nil", ti.Name)
		}
		// Exact arithmetic, independent of the parser's overflow checks.
		n := big.NewInt(int64(ti.DType.Size()))
		for _, d := range ti.Shape {
			if d < 0 {
				t.Fatalf("tensor %q: shape %v accepted with a negative dimension", ti.Name, ti.Shape)
			}
			n.Mul(n, big.NewInt(int64(d)))
		}
		if !n.IsInt64() || n.Int64() != ti.Length {
			t.Fatalf("tensor %q: Length = %d; want %d for shape %v of %s", ti.Name, ti.Length, n, ti.Shape, ti.DType)
		}
		if ti.Offset < 8+2 {
			t.Fatalf("tensor %q: Offset = %d; want >= 10 (after the header)", ti.Name, ti.Offset)
		}
		if next >= 0 && ti.Offset != next {
			t.Fatalf("tensor %q: Offset = %d; want %d, the end of the previous tensor", ti.Name, ti.Offset, next)
		}
		next = ti.Offset + ti.Length
	}
	if next >= 0 && next != size {
		t.Fatalf("tensors end at %d; want %d, the file size", next, size)
	}
}
