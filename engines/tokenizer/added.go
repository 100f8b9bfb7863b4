package tokenizer

import (
	"sort"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens.
type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// matcher finds added tokens in text the way the tokenizers library's AddedVocabulary does:
// leftmost-longest matches (its Aho-Corasick automaton), then the single_word, lstrip and
// rstrip rules. A byte trie with a direct-indexed root is enough here: added tokens are
// short and most text positions fail on the first byte.
type matcher struct {
	root  [256]int32 // child of the root per byte, 0 when none
	nodes []trieNode
	toks  []addedToken // token per trie terminal, indexed by trieNode.tok
}

type trieNode struct {
	edges []trieEdge // sorted by byte
	tok   int32      // index into matcher.toks, -1 when no token ends here
}

type trieEdge struct {
	b    byte
	next int32
}

// segment is a piece of text: either an added token (id >= 0) or text to tokenize.
type segment struct {
	start, end int
	id         int32
}

func newMatcher(toks []addedToken) *matcher {
	if len(toks) == 0 {
		return nil
	}
	m := &matcher{nodes: []trieNode{{tok: -1}}}
	for _, tok := range toks {
		if tok.Content == "" {
			continue
		}
		n := int32(0)
		for i := 0; i < len(tok.Content); i++ {
			n = m.child(n, tok.Content[i], true)
		}
		if m.nodes[n].tok < 0 {
			m.nodes[n].tok = int32(len(m.toks))
			m.toks = append(m.toks, tok)
		} else {
			// Two added tokens with one content: the later entry wins, as in a Rust HashMap
			// built in file order.
			m.toks[m.nodes[n].tok] = tok
		}
	}
	return m
}

// child returns the child of node n for byte b, adding it when add is set; 0 means none.
func (m *matcher) child(n int32, b byte, add bool) int32 {
	if n == 0 {
		if c := m.root[b]; c != 0 || !add {
			return c
		}
		c := m.newNode()
		m.root[b] = c
		return c
	}
	edges := m.nodes[n].edges
	i := sort.Search(len(edges), func(i int) bool { return edges[i].b >= b })
	if i < len(edges) && edges[i].b == b {
		return edges[i].next
	}
	if !add {
		return 0
	}
	c := m.newNode()
	edges = append(edges, trieEdge{})
	copy(edges[i+1:], edges[i:])
	edges[i] = trieEdge{b: b, next: c}
	m.nodes[n].edges = edges
	return c
}

func (m *matcher) newNode() int32 {
	m.nodes = append(m.nodes, trieNode{tok: -1})
	return int32(len(m.nodes) - 1)
}

// longest returns the longest added token starting at text[i] and its end, or -1.
func (m *matcher) longest(text string, i int) (tok int32, end int) {
	tok, end = -1, -1
	n := m.root[text[i]]
	for j := i + 1; n != 0; j++ {
		if t := m.nodes[n].tok; t >= 0 {
			tok, end = t, j
		}
		if j == len(text) {
			break
		}
		edges := m.nodes[n].edges
		n = 0
		c := text[j]
		for _, e := range edges {
			if e.b >= c {
				if e.b == c {
					n = e.next
				}
				break
			}
		}
	}
	return tok, end
}

// split appends the segments of text to out: added tokens and the text between them.
// Text segments are never empty; an empty text yields no segments.
func (m *matcher) split(text string, out []segment) []segment {
	if m == nil {
		if text != "" {
			out = append(out, segment{0, len(text), -1})
		}
		return out
	}
	last := 0 // start_offset in the tokenizers library
	for i := 0; i < len(text); {
		if m.root[text[i]] == 0 {
			i++
			continue
		}
		t, matchEnd := m.longest(text, i)
		if t < 0 {
			i++
			continue
		}
		tok := &m.toks[t]
		start, stop := i, matchEnd
		i = matchEnd // the automaton resumes after the raw match whatever the rules below do
		if tok.SingleWord {
			startSpace := start == 0 || !endsWithWord(text[:start])
			stopSpace := stop == len(text) || !startsWithWord(text[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if tok.LStrip {
			start = max(spaceLeftmostAtEnd(text[:start]), last)
		}
		if tok.RStrip {
			stop += spaceRightmostAtStart(text[stop:])
		}
		if start > last {
			out = append(out, segment{last, start, -1})
		}
		out = append(out, segment{start, stop, int32(tok.ID)})
		last = stop
	}
	if last < len(text) {
		out = append(out, segment{last, len(text), -1})
	}
	return out
}

// isAlphanumeric is Rust's char::is_alphanumeric: Alphabetic or Numeric.
func isAlphanumeric(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.Other_Alphabetic, r)
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isAlphanumeric(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isAlphanumeric(r)
}

// spaceLeftmostAtEnd returns where the run of white space that ends s begins.
func spaceLeftmostAtEnd(s string) int {
	for len(s) > 0 {
		r, n := utf8.DecodeLastRuneInString(s)
		if !unicode.IsSpace(r) {
			return len(s)
		}
		s = s[:len(s)-n]
	}
	return 0
}

// spaceRightmostAtStart returns the length of the run of white space that starts s.
func spaceRightmostAtStart(s string) int {
	for i, r := range s {
		if !unicode.IsSpace(r) {
			return i
		}
	}
	return len(s)
}
