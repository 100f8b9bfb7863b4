package safetensors

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// u8 returns a U8 tensor of the given values.
func u8(name string, values ...byte) tensor {
	return tensor{TensorInfo{Name: name, DType: U8, Shape: []int{len(values)}}, values}
}

// layout is a checkpoint directory to create: shard files with their tensors and, optionally, raw
// files such as an index.
type layout struct {
	shards map[string][]tensor
	files  map[string]string
}

func (l layout) create(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, tensors := range l.shards {
		writeTensors(t, filepath.Join(dir, name), tensors, nil)
	}
	for name, content := range l.files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// twoShards is a sharded checkpoint's shards without the index.
var twoShards = map[string][]tensor{
	"model-00001-of-00002.safetensors": {u8("a", 1), u8("b", 2, 2)},
	"model-00002-of-00002.safetensors": {u8("c", 3, 3, 3)},
}

func TestOpenDir(t *testing.T) {
	const index = `{"metadata": {"total_size": 6}, "weight_map": {"a": "model-00001-of-00002.safetensors",
		"b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}`
	tests := []struct {
		name   string
		layout layout
		want   map[string][]byte
	}{
		{
			name:   "single file",
			layout: layout{shards: map[string][]tensor{"model.safetensors": {u8("x", 1, 2), u8("y")}}},
			want:   map[string][]byte{"x": {1, 2}, "y": {}},
		},
		{
			name:   "single file preferred over other files",
			layout: layout{shards: map[string][]tensor{"model.safetensors": {u8("x", 1)}, "adapters.safetensors": {u8("x", 2)}}},
			want:   map[string][]byte{"x": {1}},
		},
		{
			name:   "sharded with index",
			layout: layout{shards: twoShards, files: map[string]string{indexName: index}},
			want:   map[string][]byte{"a": {1}, "b": {2, 2}, "c": {3, 3, 3}},
		},
		{
			name: "index selects tensors",
			layout: layout{shards: map[string][]tensor{"s.safetensors": {u8("a", 1), u8("unlisted", 9)}},
				files: map[string]string{indexName: `{"weight_map": {"a": "s.safetensors"}, "extra": [1]}`}},
			want: map[string][]byte{"a": {1}},
		},
		{
			name:   "several files without index",
			layout: layout{shards: twoShards, files: map[string]string{"._model-00001-of-00002.safetensors": "AppleDouble junk", "README.md": "hi"}},
			want:   map[string][]byte{"a": {1}, "b": {2, 2}, "c": {3, 3, 3}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenDir(tc.layout.create(t))
			if err != nil {
				t.Fatalf("OpenDir() error = %v", err)
			}
			defer s.Close()
			got := map[string][]byte{}
			for _, name := range s.Names() {
				data, err := s.Data(name)
				if err != nil {
					t.Fatalf("Data(%q) error = %v", name, err)
				}
				got[name] = bytes.Clone(data)
				info, ok := s.Info(name)
				if !ok || info.Name != name || info.Length != int64(len(data)) {
					t.Errorf("Info(%q) = %+v, %v; want its info", name, info, ok)
				}
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("tensors diff (-got +want):\n%s", diff)
			}
			if _, err := s.Data("nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Data(%q) error = %v; want ErrNotFound", "nope", err)
			}
			if _, ok := s.Info("nope"); ok {
				t.Errorf("Info(%q) ok = true; want false", "nope")
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close() error = %v", err)
			}
			if _, err := s.Data(s.Names()[0]); !errors.Is(err, os.ErrClosed) {
				t.Errorf("Data() after Close error = %v; want os.ErrClosed", err)
			}
		})
	}
}

func TestOpenDirErrors(t *testing.T) {
	shard1 := "model-00001-of-00002.safetensors"
	indexWith := func(weightMap string) map[string]string {
		return map[string]string{indexName: `{"metadata": {}, "weight_map": ` + weightMap + `}`}
	}
	tests := []struct {
		name   string
		layout layout
		want   []error
		msg    string
	}{
		{"empty directory", layout{}, []error{fs.ErrNotExist}, "no model.safetensors, model.safetensors.index.json or *.safetensors file"},
		{
			"index pointing at missing shard",
			layout{shards: map[string][]tensor{shard1: twoShards[shard1]},
				files: indexWith(`{"a": "` + shard1 + `", "b": "` + shard1 + `", "c": "model-00002-of-00002.safetensors"}`)},
			[]error{ErrTruncated, fs.ErrNotExist},
			`model.safetensors.index.json: 1 of 2 shards missing: model-00002-of-00002.safetensors (1 tensors, e.g. "c") (incomplete download?`,
		},
		{
			"index pointing at missing tensor",
			layout{shards: twoShards, files: indexWith(`{"a": "` + shard1 + `", "c": "` + shard1 + `"}`)},
			[]error{ErrCorrupt},
			`model.safetensors.index.json: 1 tensors of the weight_map are not in the shard it names: "c" (in ` + shard1 + `)`,
		},
		{
			"index with shard outside the directory",
			layout{shards: twoShards, files: indexWith(`{"a": "../` + shard1 + `"}`)},
			[]error{ErrCorrupt},
			`"weight_map" puts tensor "a" in "../` + shard1 + `", which is not a file name inside the checkpoint directory`,
		},
		{"index with invalid JSON", layout{shards: twoShards, files: map[string]string{indexName: `{"weight_map": {`}}, []error{ErrCorrupt}, "model.safetensors.index.json: not valid JSON"},
		{"index not an object", layout{shards: twoShards, files: map[string]string{indexName: `[]`}}, []error{ErrCorrupt}, "index is an array, not a JSON object"},
		{"index without weight_map", layout{shards: twoShards, files: map[string]string{indexName: `{"metadata": {}}`}}, []error{ErrCorrupt}, `no "weight_map" entries`},
		{"index with weight_map not an object", layout{shards: twoShards, files: indexWith(`["a"]`)}, []error{ErrCorrupt}, `"weight_map" is an array, not an object`},
		{"index with shard not a string", layout{shards: twoShards, files: indexWith(`{"a": 1}`)}, []error{ErrCorrupt}, `"weight_map" maps tensor "a" to the number 1, not a file name`},
		{"index with duplicate tensor", layout{shards: twoShards, files: indexWith(`{"a": "` + shard1 + `", "a": "` + shard1 + `"}`)}, []error{ErrCorrupt}, `"weight_map" lists tensor "a" twice`},
		{
			"tensor in two files without index",
			layout{shards: map[string][]tensor{"a.safetensors": {u8("x", 1)}, "b.safetensors": {u8("x", 2)}}},
			[]error{ErrCorrupt},
			`tensor "x": is in both a.safetensors and b.safetensors (mixed checkpoints?`,
		},
		{
			"truncated shard",
			layout{shards: map[string][]tensor{shard1: twoShards[shard1]}, files: map[string]string{"model-00002-of-00002.safetensors": "\x40\x00\x00\x00\x00\x00\x00\x00{"}},
			[]error{ErrTruncated},
			"model-00002-of-00002.safetensors: header length 64 exceeds the 1 bytes after the length prefix",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenDir(tc.layout.create(t))
			if err == nil {
				s.Close()
				t.Fatalf("OpenDir() error = nil; want %q", tc.msg)
			}
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Errorf("OpenDir() error = %v; want it to wrap %v", err, want)
				}
			}
			if !strings.HasPrefix(err.Error(), "safetensors: ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("OpenDir() error = %q; want \"safetensors: ...%s...\"", err, tc.msg)
			}
		})
	}
}

func TestOpenDirMissing(t *testing.T) {
	_, err := OpenDir(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenDir() error = %v; want fs.ErrNotExist", err)
	}
}

func TestWriteIndex(t *testing.T) {
	dir := layout{shards: twoShards}.create(t)
	weightMap := map[string]string{"c": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}
	if err := WriteIndex(dir, weightMap, 6); err != nil {
		t.Fatalf("WriteIndex() error = %v", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, indexName))
	if err != nil {
		t.Fatal(err)
	}
	// As Hugging Face writes it: json.dumps(index, indent=2, sort_keys=True) + "\n".
	want := `{
  "metadata": {
    "total_size": 6
  },
  "weight_map": {
    "a": "model-00001-of-00002.safetensors",
    "b": "model-00001-of-00002.safetensors",
    "c": "model-00002-of-00002.safetensors"
  }
}
`
	if diff := cmp.Diff(string(got), want); diff != "" {
		t.Errorf("index diff (-got +want):\n%s", diff)
	}
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatalf("OpenDir() error = %v", err)
	}
	defer s.Close()
	if diff := cmp.Diff(s.Names(), []string{"a", "b", "c"}); diff != "" {
		t.Errorf("Names() diff (-got +want):\n%s", diff)
	}
}

func TestWriteIndexErrors(t *testing.T) {
	tests := []struct {
		name      string
		weightMap map[string]string
		totalSize int64
		msg       string
	}{
		{"empty", nil, 0, "empty weight map"},
		{"negative size", map[string]string{"a": "s.safetensors"}, -1, "negative total size -1"},
		{"shard outside", map[string]string{"a": "/tmp/s.safetensors"}, 1, `tensor "a": shard "/tmp/s.safetensors" is not a file name inside`},
		{"invalid UTF-8", map[string]string{"a\xff": "s.safetensors"}, 1, "not valid UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := WriteIndex(dir, tc.weightMap, tc.totalSize)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("WriteIndex() error = %v; want it to contain %q", err, tc.msg)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("directory holds %d entries after a failed WriteIndex; want 0", len(entries))
			}
		})
	}
}
