package tokenizer

import "unicode/utf8"

// byteToRune is GPT-2's bytes_to_unicode table used by the ByteLevel pre-tokenizer and
// decoder: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards,
// so every byte of a word becomes one printable char.
var byteToRune [256]rune

// runeToByte inverts byteToRune for runes below len(runeToByte); -1 marks no byte.
var runeToByte [256 + 68]int16

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	n := 0
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
		runeToByte[byteToRune[b]] = int16(b)
	}
}

// appendByteLevel appends the byte-level form of s to dst.
func appendByteLevel(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = utf8.AppendRune(dst, byteToRune[s[i]])
	}
	return dst
}

// appendByteLevelDecoded appends the bytes a byte-level token stands for. Like the
// library's ByteLevel decoder, a token holding any char outside the table is kept as is.
func appendByteLevelDecoded(dst []byte, tok string) []byte {
	start := len(dst)
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return append(dst[:start], tok...)
		}
		dst = append(dst, byte(runeToByte[r]))
	}
	return dst
}

// appendLossy appends b to dst with each maximal invalid UTF-8 subsequence replaced by
// U+FFFD, which is what Rust's String::from_utf8_lossy does (Go's strings.ToValidUTF8
// collapses whole runs and utf8.DecodeRune replaces byte by byte, so neither matches).
func appendLossy(dst, b []byte) []byte {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		n := validPrefix(b[i:])
		if n > 0 && n == seqLen(c) {
			dst = append(dst, b[i:i+n]...)
			i += n
			continue
		}
		dst = append(dst, "\uFFFD"...)
		i += max(n, 1)
	}
	return dst
}

// seqLen returns the length of the UTF-8 sequence a lead byte starts, or 0.
func seqLen(c byte) int {
	switch {
	case c < 0x80:
		return 1
	case c >= 0xC2 && c <= 0xDF:
		return 2
	case c >= 0xE0 && c <= 0xEF:
		return 3
	case c >= 0xF0 && c <= 0xF4:
		return 4
	}
	return 0
}

// validPrefix returns how many leading bytes of b form a valid (possibly incomplete)
// UTF-8 sequence, at most the full sequence length; 0 when b[0] cannot start one.
func validPrefix(b []byte) int {
	c := b[0]
	want := seqLen(c)
	if want <= 1 {
		return want
	}
	lo, hi := byte(0x80), byte(0xBF)
	switch c {
	case 0xE0:
		lo = 0xA0
	case 0xED:
		hi = 0x9F
	case 0xF0:
		lo = 0x90
	case 0xF4:
		hi = 0x8F
	}
	n := 1
	for ; n < want && n < len(b); n++ {
		if b[n] < lo || b[n] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return n
}
