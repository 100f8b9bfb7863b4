package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// build returns a safetensors file with the given JSON header and data buffer.
func build(header string, buf []byte) []byte {
	return append(append(lengthPrefix(uint64(len(header))), header...), buf...)
}

// lengthPrefix returns the 8-byte little-endian header length n.
func lengthPrefix(n uint64) []byte {
	return binary.LittleEndian.AppendUint64(nil, n)
}

// corruptCase is an invalid file and the error ParseHeader must give for it.
type corruptCase struct {
	name string
	data []byte
	want error  // the sentinel
	msg  string // a part of the message that names the problem
}

// corruptCases are shared by TestParseHeaderCorrupt and the fuzz seed corpus.
func corruptCases() []corruptCase {
	const a = `{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`
	zeros := func(n int) []byte { return make([]byte, n) }
	return []corruptCase{
		{"empty file", nil, ErrTruncated, "file is 0 bytes, too short for the 8-byte header length"},
		{"truncated header length", []byte{2, 0, 0}, ErrTruncated, "file is 3 bytes"},
		{"header length beyond file", append(lengthPrefix(100), "{}"...), ErrTruncated, "header length 100 exceeds the 2 bytes after the length prefix (file truncated?"},
		{"header length beyond limit", append(lengthPrefix(1<<40), "{}"...), ErrCorrupt, "header length 1099511627776 exceeds the 100 MiB limit"},
		{"header length overflows int64", append(lengthPrefix(1<<63+5), "{}"...), ErrCorrupt, "exceeds the 100 MiB limit"},
		{"empty header", build("", nil), ErrCorrupt, `header does not start with '{': it begins ""`},
		{"non-object header", build(`["a"]`, nil), ErrCorrupt, `header does not start with '{': it begins "[\"a\"]"`},
		{"leading whitespace", build(` {}`, nil), ErrCorrupt, "header does not start with '{'"},
		{"not safetensors", []byte("PK\x03\x04 this is a zip file"), ErrCorrupt, "header length"},
		{"invalid JSON", build(`{"a":`, nil), ErrCorrupt, "header is not valid JSON: unexpected EOF"},
		{"invalid JSON missing colon", build(`{"a" 1}`, nil), ErrCorrupt, "header is not valid JSON: expected colon after object key"},
		{"invalid JSON unterminated object", build(`{"a":`+a, zeros(8)), ErrCorrupt, "header is not valid JSON"},
		{"trailing garbage", build(`{}x`, nil), ErrCorrupt, "header is not valid JSON: invalid character 'x'"},
		{"trailing NUL", build("{}\x00", nil), ErrCorrupt, "header is not valid JSON"},
		{"second object", build(`{}{}`, nil), ErrCorrupt, "header has an object after its JSON object"},
		{"invalid UTF-8", build("{\"\xff\":1}", nil), ErrCorrupt, "header is not valid UTF-8"},
		{"entry not an object", build(`{"a":[1]}`, nil), ErrCorrupt, `tensor "a": entry is an array, not an object`},
		{"entry null", build(`{"a":null}`, nil), ErrCorrupt, `tensor "a": entry is null`},
		{"metadata not an object", build(`{"__metadata__":["x"]}`, nil), ErrCorrupt, `"__metadata__" is an array, not an object of strings`},
		{"metadata value not a string", build(`{"__metadata__":{"k":1}}`, nil), ErrCorrupt, `"__metadata__" key "k" is the number 1, not a string`},
		{"metadata value an object", build(`{"__metadata__":{"k":{}}}`, nil), ErrCorrupt, `"__metadata__" key "k" is an object`},
		{"duplicate metadata key", build(`{"__metadata__":{"k":"1","k":"2"}}`, nil), ErrCorrupt, `"__metadata__" has key "k" twice`},
		{"duplicate metadata", build(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrCorrupt, `header has two "__metadata__" entries`},
		{"missing dtype", build(`{"a":{"shape":[2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": entry has no "dtype"`},
		{"missing shape", build(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": entry has no "shape"`},
		{"missing data_offsets", build(`{"a":{"dtype":"F32","shape":[2]}}`, zeros(8)), ErrCorrupt, `tensor "a": entry has no "data_offsets"`},
		{"field name in wrong case", build(`{"a":{"DTYPE":"F32","shape":[2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": entry has no "dtype"`},
		{"duplicate field", build(`{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": field "dtype" appears twice`},
		{"unknown dtype", build(`{"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": unknown dtype "f32" (want one of BOOL, U8`},
		{"dtype not a string", build(`{"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": dtype is the number 4, not a string`},
		{"sub-byte dtype", build(`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, zeros(1)), errors.ErrUnsupported, `tensor "a": dtype F4 packs several elements per byte`},
		{"negative shape", build(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": shape has negative element -2`},
		{"negative zero shape", build(`{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `shape has negative element -0`},
		{"fractional shape", build(`{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": shape has element 2.0, not an integer`},
		{"exponent shape", build(`{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `shape has element 2e0, not an integer`},
		{"shape dimension beyond int64", build(`{"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `shape has element 9223372036854775808, beyond 2^63-1`},
		{"shape not an array", build(`{"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": shape is the number 2, not an array of integers`},
		{"shape element null", build(`{"a":{"dtype":"F32","shape":[null],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `shape has an element that is null`},
		{"shape element nested", build(`{"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `shape has an element that is an array`},
		{"shape/length mismatch", build(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, zeros(8)), ErrCorrupt, `tensor "a": shape [3] of F32 needs 12 bytes but data_offsets [0, 8] hold 8`},
		{"overflowing shape product", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `tensor "a": shape [4294967296 4294967296] of U8 overflows`},
		{"overflow from element size", build(`{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `of F32 overflows`},
		{"overflow before a zero dimension", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `overflows`},
		{"data_offsets with one element", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}}`, zeros(8)), ErrCorrupt, `tensor "a": data_offsets has 1 elements, want 2`},
		{"data_offsets reversed", build(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, zeros(8)), ErrCorrupt, `tensor "a": data_offsets [8, 0] end before they begin`},
		{"negative data_offsets", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}`, zeros(8)), ErrCorrupt, `data_offsets has negative element -8`},
		{"offsets beyond buffer", build(`{"model.layers.3.mlp.up_proj.weight":{"dtype":"U8","shape":[10],"data_offsets":[10,20]}}`, zeros(16)), ErrTruncated,
			`tensor "model.layers.3.mlp.up_proj.weight": data_offsets [10, 20] exceed the 16-byte data buffer (file truncated? re-download or re-run hippo synth)`},
		{"truncated data", build(`{"a":`+a+`}`, zeros(5)), ErrTruncated, `tensor "a": data_offsets [0, 8] exceed the 5-byte data buffer`},
		{"offsets beyond int64", build(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[99999999999999999999,99999999999999999999]}}`, nil), ErrCorrupt, `data_offsets has element 99999999999999999999, beyond 2^63-1`},
		{"overlapping tensors", build(`{"a":`+a+`,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, zeros(12)), ErrCorrupt, `tensor "b": data_offsets [4, 12] overlap tensor "a" at [0, 8]`},
		{"same offsets", build(`{"a":`+a+`,"b":`+a+`}`, zeros(8)), ErrCorrupt, `tensor "b": data_offsets [0, 8] overlap tensor "a" at [0, 8]`},
		{"empty tensor inside another", build(`{"a":`+a+`,"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`, zeros(8)), ErrCorrupt, `tensor "b": data_offsets [4, 4] overlap tensor "a"`},
		{"gap between tensors", build(`{"a":`+a+`,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}`, zeros(16)), ErrCorrupt, `tensor "b": data_offsets [12, 16] leave a 4-byte gap before them`},
		{"gap at start", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, zeros(8)), ErrCorrupt, `leave a 4-byte gap`},
		{"trailing bytes", build(`{"a":`+a+`}`, zeros(9)), ErrCorrupt, `the last 1 bytes of the 9-byte data buffer belong to no tensor`},
		{"no tensors but data", build(`{}`, zeros(3)), ErrCorrupt, `the last 3 bytes of the 3-byte data buffer belong to no tensor`},
		{"duplicate tensor names", build(`{"a":`+a+`,"a":`+a+`}`, zeros(8)), ErrCorrupt, `tensor "a": appears twice in the header`},
	}
}

func TestParseHeaderCorrupt(t *testing.T) {
	for _, tc := range corruptCases() {
		t.Run(tc.name, func(t *testing.T) {
			infos, _, err := ParseHeader(bytes.NewReader(tc.data), int64(len(tc.data)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseHeader() = %v, %v; want an error wrapping %v", infos, err, tc.want)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "safetensors: ") || !strings.Contains(msg, tc.msg) {
				t.Errorf("ParseHeader() error = %q; want \"safetensors: ...%s...\"", msg, tc.msg)
			}

			// Open names the file as well.
			path := filepath.Join(t.TempDir(), "model.safetensors")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err == nil {
				f.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open() error = %v; want an error wrapping %v", err, tc.want)
			}
			if want := "safetensors: " + path + ": "; !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Open() error = %q; want \"%s...%s...\"", err, want, tc.msg)
			}
		})
	}
}

// validCase is a valid file, given by its header and data buffer length, and what ParseHeader
// must make of it.
type validCase struct {
	name     string
	header   string
	bufLen   int
	want     []TensorInfo // Offset relative to the data buffer
	wantMeta map[string]string
}

// data returns the file's bytes.
func (tc validCase) data() []byte {
	return build(tc.header, make([]byte, tc.bufLen))
}

// validCases are shared by TestParseHeader, TestReferenceAgrees and the fuzz seed corpus.
func validCases() []validCase {
	const f32x2 = `{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`
	return []validCase{
		{name: "empty", header: `{}`, want: []TensorInfo{}, wantMeta: map[string]string{}},
		{name: "metadata only", header: `{"__metadata__":{"format":"pt","b":""}}`, want: []TensorInfo{},
			wantMeta: map[string]string{"format": "pt", "b": ""}},
		{name: "null metadata", header: `{"__metadata__":null,"a":` + f32x2 + `}`, bufLen: 8,
			want: []TensorInfo{{Name: "a", DType: F32, Shape: []int{2}, Length: 8}}, wantMeta: map[string]string{}},
		{name: "padded with spaces", header: `{"a":` + f32x2 + `}   `, bufLen: 8,
			want: []TensorInfo{{Name: "a", DType: F32, Shape: []int{2}, Length: 8}}, wantMeta: map[string]string{}},
		{name: "whitespace inside and newline after", header: "{ \"a\" :\n " + f32x2 + " }\n", bufLen: 8,
			want: []TensorInfo{{Name: "a", DType: F32, Shape: []int{2}, Length: 8}}, wantMeta: map[string]string{}},
		{name: "unknown field ignored as by the reference library", header: `{"a":{"x":[{}],"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, bufLen: 8,
			want: []TensorInfo{{Name: "a", DType: F32, Shape: []int{2}, Length: 8}}, wantMeta: map[string]string{}},
		{
			name: "data order, scalars and empty tensors",
			// c is a scalar BF16; e and z hold no elements and share offsets with others.
			header: `{"z":{"dtype":"I64","shape":[0,3],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[3],"data_offsets":[2,5]},` +
				`"c":{"dtype":"BF16","shape":[],"data_offsets":[0,2]},"e":{"dtype":"F32","shape":[0],"data_offsets":[5,5]},` +
				`"":{"dtype":"BOOL","shape":[1,1],"data_offsets":[5,6]}}`,
			bufLen: 6,
			want: []TensorInfo{
				{Name: "z", DType: I64, Shape: []int{0, 3}, Offset: 0, Length: 0},
				{Name: "c", DType: BF16, Shape: []int{}, Offset: 0, Length: 2},
				{Name: "b", DType: U8, Shape: []int{3}, Offset: 2, Length: 3},
				{Name: "e", DType: F32, Shape: []int{0}, Offset: 5, Length: 0},
				{Name: "", DType: BOOL, Shape: []int{1, 1}, Offset: 5, Length: 1},
			},
			wantMeta: map[string]string{},
		},
	}
}

func TestParseHeader(t *testing.T) {
	for _, tc := range validCases() {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data()
			for i := range tc.want {
				tc.want[i].Offset += int64(8 + len(tc.header))
			}
			infos, meta, err := ParseHeader(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatalf("ParseHeader() error = %v", err)
			}
			if diff := cmp.Diff(infos, tc.want); diff != "" {
				t.Errorf("ParseHeader() infos diff (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(meta, tc.wantMeta); diff != "" {
				t.Errorf("ParseHeader() metadata diff (-got +want):\n%s", diff)
			}
		})
	}
}

// TestParseHeaderShortRead gives ParseHeader a reader shorter than the size it claims, like a
// file truncated while it is read.
func TestParseHeaderShortRead(t *testing.T) {
	data := build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, make([]byte, 4))
	for _, tc := range []struct {
		name string
		keep int
	}{{"no header length", 4}, {"half the header", 30}} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseHeader(bytes.NewReader(data[:tc.keep]), int64(len(data)))
			if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "file ends early") {
				t.Errorf("ParseHeader() error = %v; want ErrTruncated, \"file ends early\"", err)
			}
		})
	}
}

// eofReader returns io.EOF along with a read that reaches the end, as io.ReaderAt allows.
type eofReader struct{ *bytes.Reader }

func (r eofReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := r.Reader.ReadAt(p, off)
	if err == nil && off+int64(n) == r.Size() {
		err = io.EOF
	}
	return n, err
}

func TestParseHeaderEOFWithFullRead(t *testing.T) {
	for _, tc := range validCases() {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data()
			if _, _, err := ParseHeader(eofReader{bytes.NewReader(data)}, int64(len(data))); err != nil {
				t.Errorf("ParseHeader() error = %v; want nil", err)
			}
		})
	}
}

func TestDTypeSize(t *testing.T) {
	tests := []struct {
		dtype DType
		want  int
	}{
		{BOOL, 1}, {U8, 1}, {F8_E4M3, 1}, {BF16, 2}, {F16, 2}, {I16, 2}, {F32, 4}, {U32, 4},
		{I64, 8}, {F64, 8}, {C64, 8}, {"F4", 0}, {"f32", 0}, {"", 0},
	}
	for _, tc := range tests {
		if got := tc.dtype.Size(); got != tc.want {
			t.Errorf("DType(%q).Size() = %d; want %d", tc.dtype, got, tc.want)
		}
	}
}
