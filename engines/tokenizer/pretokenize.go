package tokenizer

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// Pre-tokenizer regexes with a hand-written scanner. Both are the GPT-4-style pattern with
// one difference: Qwen splits digits one by one, Llama 3 in runs of up to three.
const (
	qwenPattern   = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// gpt2Pattern is what a ByteLevel pre-tokenizer with use_regex splits on.
	gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// span is a byte range of a normalized piece of text.
type span struct{ start, end int }

// piece is a span found by a split pattern, marked when the pattern matched it.
type piece struct {
	span
	match bool
}

// behavior is the tokenizers library's SplitDelimiterBehavior.
type behavior int

const (
	isolated behavior = iota
	removed
	mergedWithPrevious
	mergedWithNext
	contiguous
)

var behaviors = map[string]behavior{
	"Isolated":           isolated,
	"Removed":            removed,
	"MergedWithPrevious": mergedWithPrevious,
	"MergedWithNext":     mergedWithNext,
	"Contiguous":         contiguous,
}

// splitter is one Split step of a pre-tokenizer.
//
// The library runs regexes with Oniguruma, and Go's regexp has no lookahead for `\s+(?!\S)`.
// The two patterns the supported models use get a hand-written scanner (scanWords): on the
// test corpus it splits about 30 times faster than regexp2 and allocates nothing, and a test
// checks it against regexp2 on that corpus. Other patterns fall back to regexp2, whose .NET
// syntax covers the lookarounds and Unicode classes these patterns use.
type splitter struct {
	literal  string          // pattern {"String": ...}
	re       *regexp2.Regexp // pattern {"Regex": ...} without a scanner
	digits   int             // > 0: scanWords with this many digits per word
	behavior behavior
}

func newSplitter(pat patternSpec, behaviorName string, invert bool) (*splitter, error) {
	b, ok := behaviors[behaviorName]
	if !ok {
		return nil, fmt.Errorf("split behavior %q: %w", behaviorName, ErrUnsupported)
	}
	if invert {
		return nil, fmt.Errorf("split with invert: %w", ErrUnsupported)
	}
	s := &splitter{behavior: b}
	switch {
	case pat.String != nil:
		if *pat.String == "" {
			return nil, fmt.Errorf("split pattern is the empty string: %w", ErrUnsupported)
		}
		s.literal = *pat.String
	case pat.Regex != nil:
		switch *pat.Regex {
		case qwenPattern:
			s.digits = 1
		case llama3Pattern:
			s.digits = 3
		default:
			re, err := newRegexp(*pat.Regex)
			if err != nil {
				return nil, err
			}
			s.re = re
		}
	default:
		return nil, fmt.Errorf("split pattern is neither String nor Regex: %w", ErrUnsupported)
	}
	return s, nil
}

// newRegexp compiles a split pattern for regexp2.
func newRegexp(pattern string) (*regexp2.Regexp, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("split regex %q: %w", pattern, err)
	}
	return re, nil
}

// split replaces each span of in by the spans the pattern and behavior make of it.
func (s *splitter) split(text string, in []span, sc *scratch) []span {
	out := sc.spans2[:0]
	for _, sp := range in {
		pieces := s.pieces(text, sp, sc.pieces[:0])
		out = applyBehavior(s.behavior, pieces, out)
		sc.pieces = pieces[:0]
	}
	sc.spans2 = in[:0]
	return out
}

// pieces appends the matches of the pattern in text[sp] and the gaps between them.
func (s *splitter) pieces(text string, sp span, out []piece) []piece {
	sub := text[sp.start:sp.end]
	if s.digits > 0 {
		return scanWords(sub, sp.start, s.digits, out)
	}
	last := 0
	addMatch := func(start, end int) {
		if start > last {
			out = append(out, piece{span{sp.start + last, sp.start + start}, false})
		}
		out = append(out, piece{span{sp.start + start, sp.start + end}, true})
		last = end
	}
	if s.literal != "" {
		for i := 0; ; {
			j := strings.Index(sub[i:], s.literal)
			if j < 0 {
				break
			}
			addMatch(i+j, i+j+len(s.literal))
			i += j + len(s.literal)
		}
	} else {
		// regexp2 reports rune indexes; map them back to bytes.
		offs := make([]int, 0, len(sub)+1)
		for i := range sub {
			offs = append(offs, i)
		}
		offs = append(offs, len(sub))
		m, err := s.re.FindStringMatch(sub)
		for err == nil && m != nil {
			if m.Length > 0 {
				addMatch(offs[m.Index], offs[m.Index+m.Length])
			}
			m, err = s.re.FindNextMatch(m)
		}
	}
	if last < len(sub) {
		out = append(out, piece{span{sp.start + last, sp.end}, false})
	}
	return out
}

// applyBehavior turns pieces into spans as SplitDelimiterBehavior says, dropping empty ones.
func applyBehavior(b behavior, pieces []piece, out []span) []span {
	base := len(out)
	prevMatch := false
	switch b {
	case isolated:
		for _, p := range pieces {
			out = append(out, p.span)
		}
	case removed:
		for _, p := range pieces {
			if !p.match {
				out = append(out, p.span)
			}
		}
	case mergedWithPrevious:
		for _, p := range pieces {
			if p.match && !prevMatch && len(out) > base {
				out[len(out)-1].end = p.end
			} else {
				out = append(out, p.span)
			}
			prevMatch = p.match
		}
	case mergedWithNext:
		for i := len(pieces) - 1; i >= 0; i-- {
			p := pieces[i]
			if p.match && !prevMatch && len(out) > base {
				out[len(out)-1].start = p.start
			} else {
				out = append(out, p.span)
			}
			prevMatch = p.match
		}
		for i, j := base, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	case contiguous:
		for _, p := range pieces {
			if p.match == prevMatch && len(out) > base {
				out[len(out)-1].end = p.end
			} else {
				out = append(out, p.span)
			}
			prevMatch = p.match
		}
	}
	// Drop empty spans.
	n := base
	for _, sp := range out[base:] {
		if sp.end > sp.start {
			out[n] = sp
			n++
		}
	}
	return out[:n]
}

// Char classes of the pattern, as Oniguruma defines them: \p{L} is General_Category L,
// \p{N} is N (Nd, Nl, No), \s is U+0009-U+000D, U+0085 and categories Zs, Zl, Zp, which is
// the set unicode.IsSpace reports. A byte that is not valid UTF-8 counts as "other".
const (
	classOther = iota
	classLetter
	classNumber
	classSpace
)

var asciiClass [utf8.RuneSelf]uint8

func init() {
	for c := range utf8.RuneSelf {
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			asciiClass[c] = classLetter
		case c >= '0' && c <= '9':
			asciiClass[c] = classNumber
		case c == ' ' || c >= '\t' && c <= '\r':
			asciiClass[c] = classSpace
		}
	}
}

// classAt returns the class and length of the char at s[i].
func classAt(s string, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	switch {
	case r == utf8.RuneError && n == 1:
		return classOther, 1
	case unicode.IsLetter(r):
		return classLetter, n
	case unicode.IsNumber(r):
		return classNumber, n
	case unicode.IsSpace(r):
		return classSpace, n
	}
	return classOther, n
}

// scanWords appends the matches of qwenPattern (digits == 1) or llama3Pattern (digits == 3)
// in s, shifted by base. Every char of s is matched by one alternative, so the matches
// cover s. Each step tries the alternatives in order, with the backtracking of a regex
// engine worked out by hand.
func scanWords(s string, base, digits int, out []piece) []piece {
	emit := func(start, end int) {
		out = append(out, piece{span{base + start, base + end}, true})
	}
	for i := 0; i < len(s); {
		cls, n := classAt(s, i)
		// (?i:'s|'t|'re|'ve|'m|'ll|'d)
		if s[i] == '\'' {
			if k := contraction(s[i+1:]); k > 0 {
				emit(i, i+1+k)
				i += 1 + k
				continue
			}
		}
		// [^\r\n\p{L}\p{N}]?\p{L}+
		if cls == classLetter {
			j := scanClass(s, i+n, classLetter, -1)
			emit(i, j)
			i = j
			continue
		}
		if cls != classNumber && s[i] != '\r' && s[i] != '\n' && i+n < len(s) {
			if c2, n2 := classAt(s, i+n); c2 == classLetter {
				j := scanClass(s, i+n+n2, classLetter, -1)
				emit(i, j)
				i = j
				continue
			}
		}
		// \p{N} or \p{N}{1,3}
		if cls == classNumber {
			j := scanClass(s, i+n, classNumber, digits-1)
			emit(i, j)
			i = j
			continue
		}
		// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
		if cls == classOther || s[i] == ' ' && i+1 < len(s) && otherAt(s, i+1) {
			j := i + n
			for j < len(s) && otherAt(s, j) {
				_, n2 := classAt(s, j)
				j += n2
			}
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			emit(i, j)
			i = j
			continue
		}
		// White space from here on. Find the run and its last line break.
		end, lastBreak, lastStart := i, -1, i
		for end < len(s) {
			c, n2 := classAt(s, end)
			if c != classSpace {
				break
			}
			if s[end] == '\r' || s[end] == '\n' {
				lastBreak = end
			}
			lastStart = end
			end += n2
		}
		switch {
		case lastBreak >= 0: // \s*[\r\n]+ backtracks to the run's last line break
			end = lastBreak + 1
		case end == len(s): // \s+(?!\S) at the end of the text
		case lastStart > i: // \s+(?!\S) leaves the last space to the next word
			end = lastStart
		}
		// Otherwise \s+ takes a single space before a non-space.
		emit(i, end)
		i = end
	}
	return out
}

// scanClass returns the end of the run of chars of class cls starting at s[i], taking at
// most limit chars when limit >= 0.
func scanClass(s string, i int, cls uint8, limit int) int {
	for ; i < len(s) && limit != 0; limit-- {
		c, n := classAt(s, i)
		if c != cls {
			break
		}
		i += n
	}
	return i
}

func otherAt(s string, i int) bool {
	c, _ := classAt(s, i)
	return c == classOther
}

// contraction returns the length of the contraction suffix after an apostrophe, matched
// case-insensitively with Unicode case folding (so U+017F LONG S counts as "s").
func contraction(s string) int {
	if s == "" {
		return 0
	}
	lower := func(c byte) byte { return c | 0x20 }
	switch lower(s[0]) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if len(s) > 1 && lower(s[1]) == 'e' {
			return 2
		}
	case 'l':
		if len(s) > 1 && lower(s[1]) == 'l' {
			return 2
		}
	}
	if strings.HasPrefix(s, "\u017F") {
		return len("\u017F")
	}
	return 0
}
