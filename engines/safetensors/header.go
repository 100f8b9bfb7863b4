// Package safetensors reads and writes checkpoints in the safetensors format: an 8-byte
// little-endian header length N, N bytes of JSON describing each tensor, then the raw tensor data.
//
// The reader is strict: it accepts only what the reference Python library accepts (and, unlike
// it, refuses duplicate JSON keys, sub-byte dtypes and headers that do not start with '{'), so a
// file that loads here loads in Python and MLX. Every error names the file and the tensor at fault
// and wraps ErrTruncated or ErrCorrupt. The writer streams tensors to disk and lays files out byte
// for byte as the reference library does.
package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Sentinel errors, matched with errors.Is. The errors returned by this package wrap them; their
// messages say what was wrong in which file and tensor.
var (
	// ErrTruncated means data the header promises is missing: a cut-off file or a missing shard.
	ErrTruncated = errors.New("safetensors: truncated")
	// ErrCorrupt means the file or index is not valid safetensors: bad JSON, an unknown dtype, a
	// shape that does not match its data, overlapping tensors, or an index that disagrees with its
	// shards.
	ErrCorrupt = errors.New("safetensors: corrupt")
	// ErrNotFound means a tensor name is not in the file, checkpoint or writer.
	ErrNotFound = errors.New("safetensors: tensor not found")
)

// maxHeaderSize bounds the JSON header, so a garbage length cannot make the reader allocate
// gigabytes. Real headers are well under 1 MiB even for models with thousands of tensors.
const maxHeaderSize = 100 << 20

const (
	hintTruncated = "file truncated? re-download or re-run hippo synth"
	hintCorrupt   = "file corrupt or not safetensors? re-download or re-run hippo synth"
)

// TensorInfo describes one tensor of a safetensors file.
type TensorInfo struct {
	// Name is the tensor's key in the header, e.g. "model.layers.0.mlp.up_proj.weight".
	Name  string
	DType DType
	// Shape is empty for a scalar.
	Shape []int
	// Offset is the absolute position of the tensor's first byte in the file and Length its size
	// in bytes (the product of Shape times DType.Size()).
	Offset, Length int64
}

// formatError is the error for a problem in a file or index. It prints only its message, so that
// the message reads as one sentence, and unwraps to its sentinel and underlying cause.
type formatError struct {
	path   string // the file, empty when not known
	tensor string // the tensor at fault, when named is set ("" is a valid tensor name)
	named  bool
	msg    string
	kind   error // ErrTruncated, ErrCorrupt, ErrNotFound, errors.ErrUnsupported or nil
	cause  error // the underlying error, or nil
}

func (e *formatError) Error() string {
	s := "safetensors: "
	if e.path != "" {
		s += e.path + ": "
	}
	if e.named {
		s += fmt.Sprintf("tensor %q: ", e.tensor)
	}
	return s + e.msg
}

func (e *formatError) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.kind, e.cause} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// fileError returns a formatError about the file at path as a whole.
func fileError(path string, kind error, format string, args ...any) *formatError {
	return &formatError{path: path, kind: kind, msg: fmt.Sprintf(format, args...)}
}

// tensorError returns a formatError about one tensor of the file at path.
func tensorError(path, tensor string, kind error, format string, args ...any) *formatError {
	return &formatError{path: path, tensor: tensor, named: true, kind: kind, msg: fmt.Sprintf(format, args...)}
}

// ParseHeader reads and validates the header of a safetensors file of size bytes read through r.
// It returns the tensors in data order (ascending Offset; zero-length tensors sharing an offset
// ordered by name) and the "__metadata__" map, which is empty, never nil, when the header has none.
//
// Validation is complete: the header length is sane, the JSON is valid with no duplicate keys,
// every dtype is known, every shape is non-negative and matches its data_offsets exactly, and the
// tensors tile the data buffer without gaps or overlaps up to its last byte (as the reference
// library requires). Errors wrap ErrTruncated, ErrCorrupt or errors.ErrUnsupported (sub-byte
// dtypes), or are I/O errors from r.
func ParseHeader(r io.ReaderAt, size int64) (infos []TensorInfo, metadata map[string]string, err error) {
	return parseHeader(r, size, "")
}

// parseHeader is ParseHeader for the file at path, which its errors name.
func parseHeader(r io.ReaderAt, size int64, path string) ([]TensorInfo, map[string]string, error) {
	if size < 8 {
		return nil, nil, fileError(path, ErrTruncated, "file is %d bytes, too short for the 8-byte header length (%s)", size, hintTruncated)
	}
	var prefix [8]byte
	if err := readFull(r, prefix[:], 0, path, "header length"); err != nil {
		return nil, nil, err
	}
	n := binary.LittleEndian.Uint64(prefix[:])
	if n > maxHeaderSize {
		return nil, nil, fileError(path, ErrCorrupt, "header length %d exceeds the %d MiB limit (%s)", n, maxHeaderSize>>20, hintCorrupt)
	}
	if n > uint64(size-8) {
		return nil, nil, fileError(path, ErrTruncated, "header length %d exceeds the %d bytes after the length prefix (%s)", n, size-8, hintTruncated)
	}
	header := make([]byte, n)
	if err := readFull(r, header, 8, path, "header"); err != nil {
		return nil, nil, err
	}
	p := headerParser{path: path, base: 8 + int64(n), size: size}
	return p.parse(header)
}

// readFull reads len(buf) bytes at off, reporting a short read as truncation.
func readFull(r io.ReaderAt, buf []byte, off int64, path, what string) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) { // a full read may come with io.EOF when it reaches the end
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF // a short read without an error breaks the io.ReaderAt contract
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &formatError{path: path, kind: ErrTruncated, cause: err,
			msg: fmt.Sprintf("read %s: file ends early (%s)", what, hintTruncated)}
	}
	return &formatError{path: path, cause: err, msg: fmt.Sprintf("read %s: %v", what, err)}
}

// headerParser validates one header. JSON is read token by token rather than unmarshaled so that
// duplicate keys are caught and field names match exactly (encoding/json matches them
// case-insensitively).
type headerParser struct {
	path string
	base int64 // absolute offset of the data buffer
	size int64 // file size
}

// rawTensor is one tensor entry before its offsets are checked against the others.
type rawTensor struct {
	info       TensorInfo
	begin, end int64
}

func (p *headerParser) parse(header []byte) ([]TensorInfo, map[string]string, error) {
	if len(header) == 0 || header[0] != '{' {
		return nil, nil, fileError(p.path, ErrCorrupt, "header does not start with '{': it begins %q (%s)", header[:min(len(header), 16)], hintCorrupt)
	}
	if !utf8.Valid(header) {
		return nil, nil, fileError(p.path, ErrCorrupt, "header is not valid UTF-8 (%s)", hintCorrupt)
	}
	dec := newDecoder(header)
	metadata := map[string]string{}
	var tensors []rawTensor
	seenMetadata := false
	names := map[string]bool{}
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, p.jsonError(err)
	}
	if tok != json.Delim('{') { // unreachable after the '{' check, kept for safety
		return nil, nil, fileError(p.path, ErrCorrupt, "header is %s, not a JSON object (%s)", describe(tok), hintCorrupt)
	}
	err = eachKey(dec, func(key string) error {
		// Each value is checked for syntax as a whole first, so the field checks below see
		// well-formed JSON and a syntax error is reported as one.
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return p.jsonError(err)
		}
		if key == "__metadata__" {
			if seenMetadata {
				return fileError(p.path, ErrCorrupt, "header has two \"__metadata__\" entries (%s)", hintCorrupt)
			}
			seenMetadata = true
			return p.metadata(raw, metadata)
		}
		if names[key] {
			return tensorError(p.path, key, ErrCorrupt, "appears twice in the header (%s)", hintCorrupt)
		}
		names[key] = true
		t, err := p.tensor(key, raw)
		if err != nil {
			return err
		}
		tensors = append(tensors, t)
		return nil
	})
	if err != nil {
		var fe *formatError
		if errors.As(err, &fe) {
			return nil, nil, err
		}
		return nil, nil, p.jsonError(err)
	}
	// The header may be padded with whitespace (the reference writer pads with spaces), nothing else.
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return nil, nil, p.jsonError(err)
		}
		return nil, nil, fileError(p.path, ErrCorrupt, "header has %s after its JSON object (%s)", describe(tok), hintCorrupt)
	}
	infos, err := p.layout(tensors)
	if err != nil {
		return nil, nil, err
	}
	return infos, metadata, nil
}

// newDecoder returns a decoder for data that keeps numbers exact.
func newDecoder(data []byte) *json.Decoder {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec
}

// eachKey reads the rest of a JSON object whose '{' has been read, calling fn with each key while
// the decoder is at its value; fn must consume the value. Syntax errors are returned as they are.
func eachKey(dec *json.Decoder, fn func(key string) error) error {
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok { // unreachable: the decoder yields only strings in key position
			return fmt.Errorf("object key is %s", describe(tok))
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	_, err := dec.Token() // the closing '}'
	return err
}

// jsonError reports a syntax error in the header.
func (p *headerParser) jsonError(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &formatError{path: p.path, kind: ErrCorrupt, cause: err,
		msg: fmt.Sprintf("header is not valid JSON: %v (%s)", err, hintCorrupt)}
}

// metadata reads the "__metadata__" value into into: an object of strings, or null for none.
func (p *headerParser) metadata(raw json.RawMessage, into map[string]string) error {
	dec := newDecoder(raw)
	tok, err := dec.Token()
	if err != nil {
		return p.jsonError(err)
	}
	if tok == nil {
		return nil
	}
	if tok != json.Delim('{') {
		return fileError(p.path, ErrCorrupt, "\"__metadata__\" is %s, not an object of strings (%s)", describe(tok), hintCorrupt)
	}
	err = eachKey(dec, func(key string) error {
		if _, dup := into[key]; dup {
			return fileError(p.path, ErrCorrupt, "\"__metadata__\" has key %q twice (%s)", key, hintCorrupt)
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		s, ok := tok.(string)
		if !ok {
			return fileError(p.path, ErrCorrupt, "\"__metadata__\" key %q is %s, not a string (%s)", key, describe(tok), hintCorrupt)
		}
		into[key] = s
		return nil
	})
	var fe *formatError
	if err != nil && !errors.As(err, &fe) {
		return p.jsonError(err)
	}
	return err
}

// tensor reads and checks one tensor entry on its own; layout checks it against the others.
func (p *headerParser) tensor(name string, raw json.RawMessage) (rawTensor, error) {
	bad := func(format string, args ...any) (rawTensor, error) {
		return rawTensor{}, tensorError(p.path, name, ErrCorrupt, format+" (%s)", append(args, hintCorrupt)...)
	}
	dec := newDecoder(raw)
	tok, err := dec.Token()
	if err != nil {
		return rawTensor{}, p.jsonError(err)
	}
	if tok != json.Delim('{') {
		return bad("entry is %s, not an object with dtype, shape and data_offsets", describe(tok))
	}
	var (
		dtype   *string
		shape   []int64
		offsets []int64
		seen    = map[string]bool{}
		fieldFn = func(key string) error {
			if seen[key] {
				_, err := bad("field %q appears twice", key)
				return err
			}
			seen[key] = true
			switch key {
			case "dtype":
				tok, err := dec.Token()
				if err != nil {
					return err
				}
				s, ok := tok.(string)
				if !ok {
					_, err := bad("dtype is %s, not a string", describe(tok))
					return err
				}
				dtype = &s
			case "shape", "data_offsets":
				ints, err := p.ints(dec, name, key)
				if err != nil {
					return err
				}
				if key == "shape" {
					shape = ints
				} else {
					offsets = ints
				}
			default:
				// The reference library ignores unknown fields; so does Hippo.
				var skip json.RawMessage
				return dec.Decode(&skip)
			}
			return nil
		}
	)
	if err := eachKey(dec, fieldFn); err != nil {
		var fe *formatError
		if errors.As(err, &fe) {
			return rawTensor{}, err
		}
		return rawTensor{}, p.jsonError(err)
	}
	for _, f := range []struct {
		name    string
		missing bool
	}{{"dtype", dtype == nil}, {"shape", shape == nil}, {"data_offsets", offsets == nil}} {
		if f.missing {
			return bad("entry has no %q", f.name)
		}
	}

	d := DType(*dtype)
	size := d.Size()
	if subByte[d] {
		return rawTensor{}, tensorError(p.path, name, errors.ErrUnsupported, "dtype %s packs several elements per byte, which hippo does not support", d)
	}
	if size == 0 {
		return bad("unknown dtype %q (want one of %s)", *dtype, knownDTypes())
	}
	if len(offsets) != 2 {
		return bad("data_offsets has %d elements, want 2 ([begin, end])", len(offsets))
	}
	begin, end := offsets[0], offsets[1]
	if end < begin {
		return bad("data_offsets [%d, %d] end before they begin", begin, end)
	}
	// Multiply in order, as the reference library does, so both refuse the same shapes.
	n, ok := int64(1), true
	for _, v := range shape {
		n, ok = mul(n, v)
		if !ok {
			break
		}
	}
	if ok {
		n, ok = mul(n, int64(size))
	}
	if !ok {
		return bad("shape %v of %s overflows: more than 2^63 bytes", shape, d)
	}
	if n != end-begin {
		return bad("shape %v of %s needs %d bytes but data_offsets [%d, %d] hold %d", shape, d, n, begin, end, end-begin)
	}
	dims := make([]int, len(shape))
	for i, v := range shape {
		if v > math.MaxInt { // only on 32-bit platforms
			return rawTensor{}, tensorError(p.path, name, errors.ErrUnsupported, "shape %v: dimension %d does not fit in this platform's int", shape, v)
		}
		dims[i] = int(v)
	}
	return rawTensor{info: TensorInfo{Name: name, DType: d, Shape: dims, Length: n}, begin: begin, end: end}, nil
}

// ints reads a JSON array of non-negative integers, the value of field key of tensor name. The
// result is non-nil even when the array is empty, so that nil means "missing".
func (p *headerParser) ints(dec *json.Decoder, name, key string) ([]int64, error) {
	bad := func(format string, args ...any) ([]int64, error) {
		return nil, tensorError(p.path, name, ErrCorrupt, "%s "+format+" (%s)", append(append([]any{key}, args...), hintCorrupt)...)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('[') {
		return bad("is %s, not an array of integers", describe(tok))
	}
	ints := []int64{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return bad("has an element that is %s, not an integer", describe(tok))
		}
		s := num.String()
		if s != "" && s[0] == '-' {
			return bad("has negative element %s", s)
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return bad("has element %s, beyond 2^63-1", s)
			}
			return bad("has element %s, not an integer", s)
		}
		ints = append(ints, v)
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return nil, err
	}
	return ints, nil
}

// mul returns a*b for non-negative a and b, and whether it did not overflow.
func mul(a, b int64) (int64, bool) {
	if a != 0 && b > math.MaxInt64/a {
		return 0, false
	}
	return a * b, true
}

// describe names a JSON token for error messages.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		if v == '[' {
			return "an array"
		}
		return fmt.Sprintf("%q", string(v))
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return strconv.FormatBool(v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

// layout checks that the tensors tile the data buffer exactly and returns them in data order.
func (p *headerParser) layout(tensors []rawTensor) ([]TensorInfo, error) {
	slices.SortFunc(tensors, func(a, b rawTensor) int {
		return cmp.Or(cmp.Compare(a.begin, b.begin), cmp.Compare(a.end, b.end), cmp.Compare(a.info.Name, b.info.Name))
	})
	bufLen := p.size - p.base
	infos := make([]TensorInfo, len(tensors))
	var next int64 // where the next tensor must begin
	for i, t := range tensors {
		name := t.info.Name
		if t.end > bufLen {
			return nil, tensorError(p.path, name, ErrTruncated, "data_offsets [%d, %d] exceed the %d-byte data buffer (%s)", t.begin, t.end, bufLen, hintTruncated)
		}
		if t.begin < next {
			prev := tensors[i-1]
			return nil, tensorError(p.path, name, ErrCorrupt, "data_offsets [%d, %d] overlap tensor %q at [%d, %d] (%s)", t.begin, t.end, prev.info.Name, prev.begin, prev.end, hintCorrupt)
		}
		if t.begin > next {
			return nil, tensorError(p.path, name, ErrCorrupt, "data_offsets [%d, %d] leave a %d-byte gap before them in the data buffer (%s)", t.begin, t.end, t.begin-next, hintCorrupt)
		}
		next = t.end
		infos[i] = t.info
		infos[i].Offset = p.base + t.begin
	}
	if next != bufLen {
		return nil, fileError(p.path, ErrCorrupt, "the last %d bytes of the %d-byte data buffer belong to no tensor (%s)", bufLen-next, bufLen, hintCorrupt)
	}
	return infos, nil
}
