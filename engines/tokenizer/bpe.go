package tokenizer

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// bpe is the tokenizers library's BPE model without dropout. It is read-only after load.
type bpe struct {
	vocab map[string]int32
	// merges maps a pair of ids (left<<32 | right) to its rank<<32 | merged id. A pair
	// listed twice keeps its last rank, as the library's HashMap does.
	merges       map[uint64]uint64
	unk          int32 // -1 when the model has no unk token
	fuseUnk      bool
	ignoreMerges bool
	byteFallback bool
	fallback     [256]int32 // id of "<0xNN>" per byte, -1 when missing
	// byteLevel is set when a ByteLevel pre-tokenizer maps each byte to a printable char
	// before the model sees the word; byteIDs then holds the id of that char per byte.
	byteLevel bool
	byteIDs   [256]int32
}

const noMerge = math.MaxUint64

// newBPE builds the model from the vocab and merge ranks Load decoded.
func newBPE(spec *modelSpec, byteLevel bool) (*bpe, error) {
	m := &bpe{
		vocab:        spec.vocab,
		merges:       spec.merges,
		unk:          -1,
		fuseUnk:      spec.FuseUnk,
		ignoreMerges: spec.IgnoreMerges,
		byteFallback: spec.ByteFallback,
		byteLevel:    byteLevel,
	}
	if spec.UnkToken != nil {
		id, ok := m.vocab[*spec.UnkToken]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocab", *spec.UnkToken)
		}
		m.unk = id
	}
	for b := range 256 {
		m.fallback[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok && m.byteFallback {
			m.fallback[b] = id
		}
		m.byteIDs[b] = -1
		if id, ok := m.vocab[string(byteToRune[b])]; ok {
			m.byteIDs[b] = id
		}
	}
	return m, nil
}

// rank returns the packed rank and merged id of a pair, or noMerge.
func (m *bpe) rank(left, right int32) uint64 {
	if r, ok := m.merges[uint64(uint32(left))<<32|uint64(uint32(right))]; ok {
		return r
	}
	return noMerge
}

// encodeWord appends the ids of one pre-tokenized word to out.
func (m *bpe) encodeWord(word string, sc *scratch, out []int) []int {
	if word == "" {
		return out
	}
	if m.ignoreMerges {
		var id int32
		var ok bool
		if m.byteLevel {
			sc.buf = appendByteLevel(sc.buf[:0], word)
			id, ok = m.vocab[string(sc.buf)] // a conversion inside the index does not allocate
		} else {
			id, ok = m.vocab[word]
		}
		if ok {
			return append(out, int(id))
		}
	}
	ids := m.symbols(word, sc)
	if len(ids) > 1 {
		if len(ids) <= smallWord {
			ids = m.mergeSmall(ids, sc)
		} else {
			ids = m.mergeHeap(ids, sc)
		}
	}
	for _, id := range ids {
		out = append(out, int(id))
	}
	sc.ids = ids[:0]
	return out
}

// symbols returns the initial symbols of a word: one per char (per byte for byte-level),
// following BPE::merge_word: byte fallback, then the unk token, else the char is dropped.
func (m *bpe) symbols(word string, sc *scratch) []int32 {
	ids := sc.ids[:0]
	if m.byteLevel {
		allKnown := true
		for i := 0; i < len(word); i++ {
			id := m.byteIDs[word[i]]
			if id < 0 {
				allKnown = false
				break
			}
			ids = append(ids, id)
		}
		if allKnown {
			return ids
		}
		ids = ids[:0]
		sc.buf = appendByteLevel(sc.buf[:0], word)
		word = string(sc.buf)
	}
	unk, unkPending := int32(-1), false
	for i := 0; i < len(word); {
		_, n := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+n]
		i += n
		if id, ok := m.vocab[ch]; ok {
			if unkPending {
				ids = append(ids, unk)
				unkPending = false
			}
			ids = append(ids, id)
			continue
		}
		if m.byteFallback && m.fallbackKnown(ch) {
			// Like the library, this does not flush a pending unk first.
			for j := 0; j < len(ch); j++ {
				ids = append(ids, m.fallback[ch[j]])
			}
			continue
		}
		if m.unk < 0 {
			continue
		}
		if unkPending && !m.fuseUnk {
			ids = append(ids, unk)
		}
		unk, unkPending = m.unk, true
	}
	if unkPending {
		ids = append(ids, unk)
	}
	return ids
}

func (m *bpe) fallbackKnown(ch string) bool {
	for i := 0; i < len(ch); i++ {
		if m.fallback[ch[i]] < 0 {
			return false
		}
	}
	return true
}

// smallWord is the longest word merged by rescanning; longer words use a heap.
const smallWord = 48

// mergeSmall applies merges lowest rank first, leftmost first on ties, by rescanning the
// pair ranks. It gives the same result as the library's heap (mergeHeap) and is faster for
// the short words a regex pre-tokenizer produces.
func (m *bpe) mergeSmall(ids []int32, sc *scratch) []int32 {
	ranks := sc.ranks[:0]
	for i := 0; i+1 < len(ids); i++ {
		ranks = append(ranks, m.rank(ids[i], ids[i+1]))
	}
	for {
		best, bestRank := -1, uint64(noMerge)
		for i, r := range ranks {
			if r < bestRank {
				best, bestRank = i, r
			}
		}
		if best < 0 {
			break
		}
		ids[best] = int32(uint32(bestRank))
		ids = append(ids[:best+1], ids[best+2:]...)
		ranks = append(ranks[:best], ranks[best+1:]...)
		if best > 0 {
			ranks[best-1] = m.rank(ids[best-1], ids[best])
		}
		if best < len(ranks) {
			ranks[best] = m.rank(ids[best], ids[best+1])
		}
	}
	sc.ranks = ranks[:0]
	return ids
}

type symbol struct {
	id         int32
	prev, next int32 // -1 at the ends
	gone       bool
}

type mergeItem struct {
	rank uint32
	pos  int32
	id   int32
}

func (a mergeItem) less(b mergeItem) bool {
	return a.rank < b.rank || a.rank == b.rank && a.pos < b.pos
}

// mergeHeap is Word::merge_all of the tokenizers library: a min-heap of candidate merges
// ordered by (rank, position), with stale entries skipped when popped.
func (m *bpe) mergeHeap(ids []int32, sc *scratch) []int32 {
	syms := sc.syms[:0]
	for i, id := range ids {
		syms = append(syms, symbol{id: id, prev: int32(i - 1), next: int32(i + 1)})
	}
	syms[len(syms)-1].next = -1
	h := sc.heap[:0]
	for i := 0; i+1 < len(ids); i++ {
		if r := m.rank(ids[i], ids[i+1]); r != noMerge {
			h = heapPush(h, mergeItem{rank: uint32(r >> 32), pos: int32(i), id: int32(uint32(r))})
		}
	}
	for len(h) > 0 {
		var top mergeItem
		top, h = heapPop(h)
		cur := &syms[top.pos]
		if cur.gone || cur.next < 0 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		r := m.rank(cur.id, right.id)
		if r == noMerge || int32(uint32(r)) != top.id {
			continue // stale: one of the two symbols changed since the push
		}
		cur.id = top.id
		cur.next = right.next
		syms[nextPos].gone = true
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if r := m.rank(syms[cur.prev].id, cur.id); r != noMerge {
				h = heapPush(h, mergeItem{rank: uint32(r >> 32), pos: cur.prev, id: int32(uint32(r))})
			}
		}
		if cur.next >= 0 {
			if r := m.rank(cur.id, syms[cur.next].id); r != noMerge {
				h = heapPush(h, mergeItem{rank: uint32(r >> 32), pos: top.pos, id: int32(uint32(r))})
			}
		}
	}
	ids = ids[:0]
	for i := range syms {
		if !syms[i].gone {
			ids = append(ids, syms[i].id)
		}
	}
	sc.syms, sc.heap = syms[:0], h[:0]
	return ids
}

func heapPush(h []mergeItem, it mergeItem) []mergeItem {
	h = append(h, it)
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func heapPop(h []mergeItem) (mergeItem, []mergeItem) {
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		c := l
		if r := l + 1; r < len(h) && h[r].less(h[l]) {
			c = r
		}
		if !h[c].less(h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	return top, h
}
