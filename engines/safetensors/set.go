package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

const (
	// singleName is the file of an unsharded Hugging Face checkpoint.
	singleName = "model.safetensors"
	// indexName maps each tensor of a sharded checkpoint to its shard.
	indexName = "model.safetensors.index.json"
	// maxListed bounds how many missing shards or tensors an error message lists.
	maxListed = 5
)

// Set is a checkpoint: the tensors of one or more safetensors files in a directory, looked up by
// name. Its methods may be called from several goroutines at once, but not concurrently with or
// after Close.
type Set struct {
	files []*File
	names []string         // sorted
	where map[string]*File // tensor name -> the file that holds it
}

// OpenDir opens the checkpoint in dir, which holds, in order of preference (the order of Hugging
// Face transformers):
//
//   - model.safetensors;
//   - model.safetensors.index.json, whose "weight_map" maps each tensor to its shard file; every
//     shard must exist and hold the tensors the index puts in it, and the Set holds exactly the
//     tensors of the weight_map;
//   - one or more *.safetensors files (dot files excluded), no tensor in two of them.
//
// Every file is validated as Open does. Missing shards give an error wrapping ErrTruncated and
// fs.ErrNotExist; an index that disagrees with its shards or a tensor in two files one wrapping
// ErrCorrupt. The caller must Close the Set.
func OpenDir(dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("safetensors: open checkpoint: %w", err)
	}
	var hasSingle, hasIndex bool
	var files []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == singleName:
			hasSingle = true
		case name == indexName:
			hasIndex = true
		// Dot files are skipped: macOS litters copies with "._model.safetensors".
		case strings.HasSuffix(name, ".safetensors") && !strings.HasPrefix(name, ".") && !e.IsDir():
			files = append(files, name)
		}
	}
	switch {
	case hasSingle:
		return openFiles(dir, []string{singleName})
	case hasIndex:
		return openIndexed(dir)
	case len(files) > 0:
		return openFiles(dir, files) // os.ReadDir sorts by name
	}
	return nil, fmt.Errorf("safetensors: %s: no %s, %s or *.safetensors file (not a checkpoint directory? download the model or run hippo synth): %w",
		dir, singleName, indexName, fs.ErrNotExist)
}

// openFiles opens the named files of dir as one Set.
func openFiles(dir string, names []string) (*Set, error) {
	s := &Set{where: map[string]*File{}}
	for _, name := range names {
		f, err := Open(filepath.Join(dir, name))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.files = append(s.files, f)
		for _, t := range f.infos {
			if other, dup := s.where[t.Name]; dup {
				s.Close()
				return nil, tensorError(dir, t.Name, ErrCorrupt, "is in both %s and %s (mixed checkpoints? keep one model per directory or add %s)",
					filepath.Base(other.path), name, indexName)
			}
			s.where[t.Name] = f
			s.names = append(s.names, t.Name)
		}
	}
	slices.Sort(s.names)
	return s, nil
}

// openIndexed opens the sharded checkpoint that dir's index describes.
func openIndexed(dir string) (*Set, error) {
	indexPath := filepath.Join(dir, indexName)
	weightMap, err := readIndex(indexPath)
	if err != nil {
		return nil, err
	}
	byShard := map[string][]string{} // shard -> its tensors, sorted
	for tensor, shard := range weightMap {
		byShard[shard] = append(byShard[shard], tensor)
	}
	shards := slices.Sorted(maps.Keys(byShard))
	s := &Set{where: make(map[string]*File, len(weightMap))}
	var missing []string
	for _, shard := range shards {
		slices.Sort(byShard[shard])
		f, err := Open(filepath.Join(dir, shard))
		if errors.Is(err, fs.ErrNotExist) {
			tensors := byShard[shard]
			missing = append(missing, fmt.Sprintf("%s (%d tensors, e.g. %q)", shard, len(tensors), tensors[0]))
			continue
		}
		if err != nil {
			s.Close()
			return nil, err
		}
		s.files = append(s.files, f)
	}
	if len(missing) > 0 {
		s.Close()
		return nil, &formatError{path: indexPath, kind: ErrTruncated, cause: fs.ErrNotExist,
			msg: fmt.Sprintf("%d of %d shards missing: %s (incomplete download? re-download or re-run hippo synth)",
				len(missing), len(shards), list(missing))}
	}
	var absent []string
	for i, shard := range shards {
		f := s.files[i]
		for _, tensor := range byShard[shard] {
			if _, ok := f.info(tensor); !ok {
				absent = append(absent, fmt.Sprintf("%q (in %s)", tensor, shard))
				continue
			}
			s.where[tensor] = f
			s.names = append(s.names, tensor)
		}
	}
	if len(absent) > 0 {
		s.Close()
		return nil, fileError(indexPath, ErrCorrupt, "%d tensors of the weight_map are not in the shard it names: %s (shards from another checkpoint? re-download or re-run hippo synth)",
			len(absent), list(absent))
	}
	slices.Sort(s.names)
	return s, nil
}

// readIndex reads the weight_map of the index file at path, checking that every shard is a file
// name inside the index's directory.
func readIndex(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: read index: %w", err)
	}
	bad := func(format string, args ...any) (map[string]string, error) {
		return nil, fileError(path, ErrCorrupt, format+" (%s)", append(args, hintCorrupt)...)
	}
	if !json.Valid(data) {
		return bad("not valid JSON")
	}
	dec := newDecoder(data)
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return bad("index is %s, not a JSON object", describe(tok))
	}
	var weightMap map[string]string
	err = eachKey(dec, func(key string) error {
		if key != "weight_map" {
			var skip json.RawMessage // "metadata" and anything else are not needed
			return dec.Decode(&skip)
		}
		if weightMap != nil {
			_, err := bad("\"weight_map\" appears twice")
			return err
		}
		if tok, _ := dec.Token(); tok != json.Delim('{') {
			_, err := bad("\"weight_map\" is %s, not an object", describe(tok))
			return err
		}
		weightMap = map[string]string{}
		return eachKey(dec, func(tensor string) error {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			shard, ok := tok.(string)
			if !ok {
				_, err := bad("\"weight_map\" maps tensor %q to %s, not a file name", tensor, describe(tok))
				return err
			}
			if _, dup := weightMap[tensor]; dup {
				_, err := bad("\"weight_map\" lists tensor %q twice", tensor)
				return err
			}
			if !filepath.IsLocal(shard) || shard != filepath.Clean(shard) {
				_, err := bad("\"weight_map\" puts tensor %q in %q, which is not a file name inside the checkpoint directory", tensor, shard)
				return err
			}
			weightMap[tensor] = shard
			return nil
		})
	})
	if err != nil {
		var fe *formatError
		if errors.As(err, &fe) {
			return nil, err
		}
		return bad("not valid JSON: %v", err)
	}
	if len(weightMap) == 0 {
		return bad("no \"weight_map\" entries")
	}
	return weightMap, nil
}

// list joins items for an error message, eliding all but the first few.
func list(items []string) string {
	if len(items) <= maxListed {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:maxListed], ", "), len(items)-maxListed)
}

// Names returns the names of all tensors, sorted. The slice is the caller's.
func (s *Set) Names() []string {
	return slices.Clone(s.names)
}

// Info returns the tensor called name; its Offset is within the file that holds it.
func (s *Set) Info(name string) (TensorInfo, bool) {
	f, ok := s.where[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.info(name)
}

// Data returns the bytes of the tensor called name, with File.Data's lifetime rules: valid until
// Close, read-only. An unknown name gives an error wrapping ErrNotFound.
func (s *Set) Data(name string) ([]byte, error) {
	f, ok := s.where[name]
	if !ok {
		return nil, &formatError{tensor: name, named: true, kind: ErrNotFound, msg: fmt.Sprintf("not among the checkpoint's %d tensors", len(s.names))}
	}
	return f.Data(name)
}

// Close closes every file of the Set.
func (s *Set) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}
