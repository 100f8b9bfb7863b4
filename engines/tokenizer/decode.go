package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// apply is the decoder's decode_chain in the tokenizers library.
func (d decoderStep) apply(toks []string) []string {
	switch d.kind {
	case "ByteLevel":
		var b []byte
		for _, tok := range toks {
			b = appendByteLevelDecoded(b, tok)
		}
		return []string{string(appendLossy(nil, b))}
	case "Replace":
		for i, tok := range toks {
			toks[i] = strings.ReplaceAll(tok, d.from, d.to)
		}
		return toks
	case "ByteFallback":
		return byteFallback(toks)
	case "Fuse":
		return []string{strings.Join(toks, "")}
	}
	return toks
}

// byteFallback joins runs of <0xNN> tokens into text. A run that is not valid UTF-8 as a
// whole becomes one U+FFFD per byte, as in the library (not Rust's usual lossy rule).
func byteFallback(toks []string) []string {
	out := toks[:0:0]
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, tok := range toks {
		if b, ok := fallbackByte(tok); ok {
			run = append(run, b)
			continue
		}
		flush()
		out = append(out, tok)
	}
	flush()
	return out
}

// fallbackByte parses a byte token "<0xNN>" the way the library does: six bytes, and the
// two between "<0x" and ">" parsed by u8::from_str_radix, which also takes "+N".
func fallbackByte(tok string) (byte, bool) {
	if len(tok) != 6 || !strings.HasPrefix(tok, "<0x") || tok[5] != '>' {
		return 0, false
	}
	hex := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	lo, ok := hex(tok[4])
	if !ok {
		return 0, false
	}
	if tok[3] == '+' {
		return lo, true
	}
	hi, ok := hex(tok[3])
	return hi<<4 | lo, ok
}

// StreamDecoder turns ids into text as they are generated. Each Add returns only text
// that later ids cannot change, so a multi-byte char split over byte-level or <0xNN>
// tokens is held back until it is complete; the concatenation of everything Add and Flush
// return equals Decode(ids, false) of all ids. A StreamDecoder is for one goroutine.
type StreamDecoder struct {
	t *Tokenizer
	// prev are the ids of the last emitted chunk and prevText their decoding; decoding
	// them again together with pending keeps context-sensitive decoders right.
	prev     []int
	prevText string
	pending  []int
	window   []int
	byteTok  bool // byte fallback decoding: a run of <0xNN> may continue
}

// NewStreamDecoder returns a StreamDecoder that decodes like Decode(ids, false).
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder {
	d := &StreamDecoder{t: t}
	for _, s := range t.decoders {
		d.byteTok = d.byteTok || s.kind == "ByteFallback"
	}
	return d
}

// Add appends one id and returns the text it completes, often "" while a char is
// incomplete.
func (d *StreamDecoder) Add(id int) string {
	if id < 0 || id >= len(d.t.tokens) || d.t.kinds[id] == tokenNone {
		return "" // Decode skips it too, without ending a byte run
	}
	d.pending = append(d.pending, id)
	if d.byteTok {
		if _, ok := fallbackByte(d.t.tokens[id]); ok {
			// The whole run decides validity, so wait for a token that ends it.
			return ""
		}
	}
	text := d.decodeWindow()
	if strings.HasSuffix(text, "\uFFFD") {
		return "" // maybe an incomplete char; a later id may complete it
	}
	return d.emit(text)
}

// Flush returns the text still held back, decoding incomplete chars as U+FFFD the way
// Decode does, and resets the decoder for a new stream.
func (d *StreamDecoder) Flush() string {
	out := ""
	if len(d.pending) > 0 {
		out = d.emit(d.decodeWindow())
	}
	d.prev, d.prevText, d.pending = d.prev[:0], "", d.pending[:0]
	return out
}

// decodeWindow decodes prev followed by pending.
func (d *StreamDecoder) decodeWindow() string {
	d.window = append(append(d.window[:0], d.prev...), d.pending...)
	return d.t.Decode(d.window, false)
}

// emit returns the part of text after prevText and makes pending the new prev.
func (d *StreamDecoder) emit(text string) string {
	out, ok := strings.CutPrefix(text, d.prevText)
	if !ok {
		out = d.t.Decode(d.pending, false)
	}
	d.prev = append(d.prev[:0], d.pending...)
	d.prevText = d.t.Decode(d.prev, false)
	d.pending = d.pending[:0]
	return out
}
