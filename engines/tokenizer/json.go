package tokenizer

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner walks JSON text without building generic values. A tokenizer.json is mostly one
// vocab object and one merges array (33 MB for Gemma 3). encoding/json validates the whole
// file and then decodes it a second time, about 0.5 s for Gemma 3 before any map is built;
// decoding those two sections straight into their final form in one pass brings all of Load
// to about 0.35 s. The small sections are still handed to encoding/json as raw slices.
type scanner struct {
	data []byte
	pos  int
}

// maxDepth bounds nesting so that hostile input cannot exhaust the stack.
const maxDepth = 512

var errSyntax = errors.New("invalid JSON")

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("%w at byte %d: %s", errSyntax, s.pos, fmt.Sprintf(format, args...))
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end of input.
func (s *scanner) peek() byte {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

func (s *scanner) expect(c byte) error {
	if s.peek() != c {
		return s.errorf("expected %q", c)
	}
	s.pos++
	return nil
}

// object calls fn for each key of an object; fn must consume the value.
func (s *scanner) object(fn func(key []byte) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	var key []byte
	for {
		var err error
		if key, err = s.str(key[:0]); err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return s.errorf("expected ',' or '}' in object")
		}
	}
}

// array calls fn for each element of an array; fn must consume the element.
func (s *scanner) array(fn func() error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for {
		if err := fn(); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.errorf("expected ',' or ']' in array")
		}
	}
}

// raw consumes one value and returns its text, for encoding/json to decode.
func (s *scanner) raw() ([]byte, error) {
	s.skipSpace()
	start := s.pos
	if err := s.skip(0); err != nil {
		return nil, err
	}
	return s.data[start:s.pos], nil
}

// skip consumes one value, checking its structure.
func (s *scanner) skip(depth int) error {
	if depth > maxDepth {
		return s.errorf("nesting deeper than %d", maxDepth)
	}
	switch c := s.peek(); {
	case c == '{':
		return s.object(func([]byte) error { return s.skip(depth + 1) })
	case c == '[':
		return s.array(func() error { return s.skip(depth + 1) })
	case c == '"':
		_, err := s.str(nil)
		return err
	case c == '-' || c >= '0' && c <= '9':
		_, err := s.number()
		return err
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(s.data)-s.pos >= len(lit) && string(s.data[s.pos:s.pos+len(lit)]) == lit {
				s.pos += len(lit)
				return nil
			}
		}
		return s.errorf("unexpected character")
	}
}

func (s *scanner) number() ([]byte, error) {
	s.skipSpace()
	start := s.pos
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		if c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' || c >= '0' && c <= '9' {
			s.pos++
			continue
		}
		break
	}
	if s.pos == start {
		return nil, s.errorf("expected number")
	}
	return s.data[start:s.pos], nil
}

// int reads an integer that fits in an int32.
func (s *scanner) int() (int, error) {
	b, err := s.number()
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return 0, s.errorf("bad integer %q", b)
	}
	return int(n), nil
}

// str decodes a string, appending its bytes to dst.
func (s *scanner) str(dst []byte) ([]byte, error) {
	if err := s.expect('"'); err != nil {
		return dst, err
	}
	start := s.pos
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			dst = append(dst, s.data[start:s.pos]...)
			s.pos++
			return dst, nil
		case c == '\\':
			dst = append(dst, s.data[start:s.pos]...)
			var err error
			if dst, err = s.escape(dst); err != nil {
				return dst, err
			}
			start = s.pos
		case c < 0x20:
			return dst, s.errorf("control character in string")
		default:
			s.pos++
		}
	}
	return dst, s.errorf("unterminated string")
}

// escape decodes the escape sequence at s.pos (a backslash) like encoding/json does,
// including surrogate pairs; a lone surrogate becomes U+FFFD.
func (s *scanner) escape(dst []byte) ([]byte, error) {
	if s.pos+1 >= len(s.data) {
		return dst, s.errorf("unterminated escape")
	}
	c := s.data[s.pos+1]
	s.pos += 2
	switch c {
	case '"', '\\', '/':
		return append(dst, c), nil
	case 'b':
		return append(dst, '\b'), nil
	case 'f':
		return append(dst, '\f'), nil
	case 'n':
		return append(dst, '\n'), nil
	case 'r':
		return append(dst, '\r'), nil
	case 't':
		return append(dst, '\t'), nil
	case 'u':
		r, ok := s.hex4()
		if !ok {
			return dst, s.errorf("bad \\u escape")
		}
		if utf16.IsSurrogate(r) {
			save := s.pos
			if s.pos+1 < len(s.data) && s.data[s.pos] == '\\' && s.data[s.pos+1] == 'u' {
				s.pos += 2
				if r2, ok := s.hex4(); ok {
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						return utf8.AppendRune(dst, dec), nil
					}
				}
			}
			s.pos = save
			r = utf8.RuneError
		}
		return utf8.AppendRune(dst, r), nil
	}
	return dst, s.errorf("bad escape \\%c", c)
}

func (s *scanner) hex4() (rune, bool) {
	if s.pos+4 > len(s.data) {
		return 0, false
	}
	var r rune
	for _, c := range s.data[s.pos : s.pos+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	s.pos += 4
	return r, true
}

// end checks that only white space follows the top-level value.
func (s *scanner) end() error {
	if s.peek() != 0 || s.pos < len(s.data) {
		return s.errorf("trailing data after JSON value")
	}
	return nil
}
