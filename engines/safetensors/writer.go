package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"
)

// Writer streams a safetensors file to disk one tensor at a time, so a checkpoint of many GB never
// has to be in memory at once. The layout is fixed when the Writer is created and is the reference
// library's, byte for byte: metadata first, then the tensors ordered by dtype (largest element
// first, so every tensor is aligned to its element size) and then by name, and the header padded
// with spaces to a multiple of 8 bytes.
//
// The file appears at its path only when Close succeeds; until then it is a hidden temporary file
// in the same directory, so an interrupted run never leaves a file that looks complete.
type Writer struct {
	mu      sync.Mutex
	path    string
	f       *os.File // the temporary file; nil once closed
	infos   []TensorInfo
	index   map[string]int // name -> position in infos
	written []bool
	err     error // the first I/O error, after which the file is abandoned
}

// Create starts writing the safetensors file at path holding tensors, whose Name, DType and Shape
// must be set; their Offset and Length are computed. Names must be unique, valid UTF-8 and not
// "__metadata__". metadata may be nil. The caller must Close the Writer.
func Create(path string, tensors []TensorInfo, metadata map[string]string) (*Writer, error) {
	infos, err := plan(tensors)
	if err != nil {
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	header, err := encodeHeader(infos, metadata)
	if err != nil {
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	base := 8 + int64(len(header))
	size := base
	for i := range infos {
		infos[i].Offset += base
		size += infos[i].Length
	}

	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	w := &Writer{path: path, f: f, infos: infos, index: make(map[string]int, len(infos)), written: make([]bool, len(infos))}
	for i, t := range infos {
		w.index[t.Name] = i
	}
	var prefix [8]byte
	binary.LittleEndian.PutUint64(prefix[:], uint64(len(header)))
	_, err = f.Write(append(prefix[:], header...))
	if err == nil {
		// Sizing the file up front makes the tensors writable in any order.
		err = f.Truncate(size)
	}
	if err != nil {
		w.abandon()
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	return w, nil
}

// plan checks the declared tensors and returns them in data order with Offset relative to the data
// buffer and Length set.
func plan(tensors []TensorInfo) ([]TensorInfo, error) {
	infos := make([]TensorInfo, len(tensors))
	seen := make(map[string]bool, len(tensors))
	for i, t := range tensors {
		switch {
		case seen[t.Name]:
			return nil, fmt.Errorf("tensor %q declared twice", t.Name)
		case t.Name == "__metadata__":
			return nil, errors.New(`tensor name "__metadata__" is reserved for the metadata`)
		case !utf8.ValidString(t.Name):
			return nil, fmt.Errorf("tensor %q: name is not valid UTF-8", t.Name)
		case t.DType.Size() == 0:
			return nil, fmt.Errorf("tensor %q: unknown dtype %q (want one of %s)", t.Name, t.DType, knownDTypes())
		}
		seen[t.Name] = true
		n, ok := int64(1), true
		for _, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("tensor %q: shape %v has a negative dimension", t.Name, t.Shape)
			}
			if n, ok = mul(n, int64(d)); !ok {
				break
			}
		}
		if ok {
			n, ok = mul(n, int64(t.DType.Size()))
		}
		if !ok {
			return nil, fmt.Errorf("tensor %q: shape %v of %s overflows: more than 2^63 bytes", t.Name, t.Shape, t.DType)
		}
		infos[i] = TensorInfo{Name: t.Name, DType: t.DType, Shape: slices.Clone(t.Shape), Length: n}
	}
	slices.SortFunc(infos, func(a, b TensorInfo) int {
		return cmp.Or(cmp.Compare(b.DType.rank(), a.DType.rank()), cmp.Compare(a.Name, b.Name))
	})
	var off int64
	for i := range infos {
		infos[i].Offset = off
		if off += infos[i].Length; off < 0 {
			return nil, errors.New("tensors total more than 2^63 bytes")
		}
	}
	return infos, nil
}

// encodeHeader returns the JSON header for infos, in data order with Offset relative to the data
// buffer, padded with spaces to a multiple of 8 bytes. It writes compact JSON as serde_json does
// in the reference library; metadata keys are sorted.
func encodeHeader(infos []TensorInfo, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		b.WriteString(`"__metadata__":{`)
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				b.WriteByte(',')
			}
			v := metadata[k]
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return nil, fmt.Errorf("metadata %q: %q: not valid UTF-8", k, v)
			}
			writeString(&b, k)
			b.WriteByte(':')
			writeString(&b, v)
		}
		b.WriteByte('}')
	}
	for i, t := range infos {
		if i > 0 || len(metadata) > 0 {
			b.WriteByte(',')
		}
		writeString(&b, t.Name)
		b.WriteString(`:{"dtype":`)
		writeString(&b, string(t.DType))
		b.WriteString(`,"shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(d))
		}
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, t.Offset, t.Offset+t.Length)
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > maxHeaderSize {
		return nil, fmt.Errorf("header of %d bytes exceeds the %d MiB limit", b.Len(), maxHeaderSize>>20)
	}
	return b.Bytes(), nil
}

// writeString writes s as a JSON string. Unlike json.Marshal's default it leaves <, > and &
// unescaped, as serde_json does.
func writeString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	// Encode cannot fail for a string written to a bytes.Buffer; it appends a newline.
	_ = enc.Encode(s)
	b.Truncate(b.Len() - 1)
}

// Write writes the data of the tensor called name: exactly its Length bytes, little-endian. Each
// declared tensor must be written once, in any order. Write may be called from several goroutines
// at once (writes are serialized), but not concurrently with Close. data is not retained.
func (w *Writer) Write(name string, data []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return fmt.Errorf("safetensors: write %s: %w", w.path, os.ErrClosed)
	}
	if w.err != nil {
		return w.err
	}
	i, ok := w.index[name]
	if !ok {
		return &formatError{path: w.path, tensor: name, named: true, kind: ErrNotFound, msg: "not declared to Create"}
	}
	t := w.infos[i]
	switch {
	case w.written[i]:
		return fmt.Errorf("safetensors: %s: tensor %q: written twice", w.path, name)
	case int64(len(data)) != t.Length:
		return fmt.Errorf("safetensors: %s: tensor %q: got %d bytes; want %d for shape %v of %s", w.path, name, len(data), t.Length, t.Shape, t.DType)
	}
	if _, err := w.f.WriteAt(data, t.Offset); err != nil {
		w.err = fmt.Errorf("safetensors: write %s: tensor %q: %w", w.path, name, err)
		return w.err
	}
	w.written[i] = true
	return nil
}

// Close checks that every declared tensor was written and moves the file into place. On any error
// the partial file is removed and nothing appears at the path. Closing twice returns an error
// wrapping os.ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return fmt.Errorf("safetensors: close %s: %w", w.path, os.ErrClosed)
	}
	if w.err != nil {
		w.abandon()
		return w.err
	}
	var missing []string
	for i, ok := range w.written {
		if !ok {
			missing = append(missing, strconv.Quote(w.infos[i].Name))
		}
	}
	if len(missing) > 0 {
		w.abandon()
		return fmt.Errorf("safetensors: %s: %d of %d tensors never written: %s; file discarded", w.path, len(missing), len(w.infos), list(missing))
	}
	tmp := w.f.Name()
	err := w.f.Close()
	w.f = nil
	if err == nil {
		// CreateTemp makes the file private; a checkpoint is as readable as any file the user creates.
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, w.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("safetensors: close %s: %w", w.path, err)
	}
	return nil
}

// abandon closes and removes the temporary file.
func (w *Writer) abandon() {
	w.f.Close()
	os.Remove(w.f.Name())
	w.f = nil
}

// WriteIndex writes dir/model.safetensors.index.json for a sharded checkpoint, as Hugging Face
// writes it: weightMap maps every tensor to the file name of its shard in dir, and totalSize is
// the sum of the tensors' Length (not of the file sizes). OpenDir checks the index against the
// shards.
func WriteIndex(dir string, weightMap map[string]string, totalSize int64) error {
	path := filepath.Join(dir, indexName)
	if len(weightMap) == 0 {
		return fmt.Errorf("safetensors: write %s: empty weight map", path)
	}
	if totalSize < 0 {
		return fmt.Errorf("safetensors: write %s: negative total size %d", path, totalSize)
	}
	for tensor, shard := range weightMap {
		if !utf8.ValidString(tensor) || !utf8.ValidString(shard) {
			return fmt.Errorf("safetensors: write %s: tensor %q: shard %q: not valid UTF-8", path, tensor, shard)
		}
		if !filepath.IsLocal(shard) || shard != filepath.Clean(shard) {
			return fmt.Errorf("safetensors: write %s: tensor %q: shard %q is not a file name inside %s", path, tensor, shard, dir)
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	type meta struct {
		TotalSize int64 `json:"total_size"`
	}
	index := struct {
		Metadata  meta              `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{meta{totalSize}, weightMap}
	if err := enc.Encode(index); err != nil {
		return fmt.Errorf("safetensors: write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+indexName+".tmp*")
	if err != nil {
		return fmt.Errorf("safetensors: write index: %w", err)
	}
	_, err = f.Write(b.Bytes())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("safetensors: write %s: %w", path, err)
	}
	return nil
}
