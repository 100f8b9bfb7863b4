package safetensors

import (
	"fmt"
	"maps"
	"os"
	"slices"
)

// File is an open safetensors file whose data is memory-mapped read-only (read into memory on
// systems without mmap). Its methods may be called from several goroutines at once, but not
// concurrently with or after Close.
type File struct {
	path  string
	data  []byte // the whole file; nil once closed
	unmap func([]byte) error
	infos []TensorInfo
	index map[string]int // name -> position in infos
	meta  map[string]string
}

// Open opens and validates the safetensors file at path (see ParseHeader for what is checked).
// The caller must Close it.
func Open(path string) (*File, error) {
	osf, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer osf.Close() // the mapping outlives the descriptor
	st, err := osf.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("safetensors: %s: not a regular file", path)
	}
	infos, meta, err := parseHeader(osf, st.Size(), path)
	if err != nil {
		return nil, err
	}
	data, unmap, err := mapFile(osf, st.Size())
	if err != nil {
		return nil, fmt.Errorf("safetensors: map %s: %w", path, err)
	}
	f := &File{path: path, data: data, unmap: unmap, infos: infos, meta: meta, index: make(map[string]int, len(infos))}
	for i, t := range infos {
		f.index[t.Name] = i
	}
	return f, nil
}

// Tensors returns the file's tensors in data order (ascending Offset). The slice is the caller's;
// the Shape slices are shared and must not be modified.
func (f *File) Tensors() []TensorInfo {
	return slices.Clone(f.infos)
}

// Metadata returns a copy of the header's "__metadata__" map; it is empty when there is none.
func (f *File) Metadata() map[string]string {
	return maps.Clone(f.meta)
}

// info returns the tensor called name.
func (f *File) info(name string) (TensorInfo, bool) {
	i, ok := f.index[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.infos[i], true
}

// Data returns the bytes of the tensor called name, little-endian as stored. The slice points into
// the mapping: it is valid until Close, must not be written to (the mapping is read-only and
// writing faults), and reading it may fault if another process truncates the file meanwhile.
// An unknown name gives an error wrapping ErrNotFound.
func (f *File) Data(name string) ([]byte, error) {
	if f.data == nil {
		return nil, fmt.Errorf("safetensors: %s: %w", f.path, os.ErrClosed)
	}
	t, ok := f.info(name)
	if !ok {
		return nil, tensorError(f.path, name, ErrNotFound, "not among the file's %d tensors", len(f.infos))
	}
	end := t.Offset + t.Length
	return f.data[t.Offset:end:end], nil
}

// Close releases the mapping; slices returned by Data must not be used afterwards. Closing twice
// returns an error wrapping os.ErrClosed.
func (f *File) Close() error {
	if f.data == nil {
		return fmt.Errorf("safetensors: %s: %w", f.path, os.ErrClosed)
	}
	data := f.data
	f.data = nil
	if err := f.unmap(data); err != nil {
		return fmt.Errorf("safetensors: unmap %s: %w", f.path, err)
	}
	return nil
}
