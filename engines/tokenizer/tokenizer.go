// Package tokenizer is a pure-Go implementation of the Hugging Face tokenizers used by the
// models Hippo benchmarks. It reads a model directory's tokenizer.json and
// tokenizer_config.json and produces the same ids as the tokenizers library, so prompts
// and token counts agree with the Python stack Hippo is compared against.
//
// It covers byte-level BPE (Qwen 3, Llama 3) and SentencePiece-style BPE with byte
// fallback (Gemma 3). Other models, normalizers, pre-tokenizers, post-processors and
// decoders are rejected by Load with an error wrapping ErrUnsupported rather than
// tokenized differently.
package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/ardanlabs/jinja"
)

// ErrUnsupported is wrapped by Load errors for tokenizer features this package does not
// implement.
var ErrUnsupported = errors.New("unsupported tokenizer feature")

// Tokenizer encodes text to token ids and back. It is immutable after Load: all methods
// may be called from many goroutines at once.
type Tokenizer struct {
	dir       string
	model     *bpe
	normalize normalizer // nil when tokenizer.json has none
	pre       *preTokenizer
	added     *matcher // added tokens matched in raw text
	addedNorm *matcher // added tokens matched in normalized text
	prefix    []int    // post-processor ids before the text
	suffix    []int    // and after it
	decoders  []decoderStep

	tokens []string // token text by id
	kinds  []uint8  // tokenNone, tokenModel or tokenAdded, by id
	// special marks ids whose text is a special added token; Decode skips them.
	special []bool
	addedID map[string]int // added token text to id

	bos     int // -1 when none
	eos     []int
	chat    *jinja.Template
	chatErr error
	// chatVars are the special tokens transformers passes to chat templates.
	chatVars map[string]string
}

const (
	tokenNone uint8 = iota
	tokenModel
	tokenAdded
)

// Load reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (special
// tokens and chat template) and dir/generation_config.json (extra EOS ids).
func Load(dir string) (*Tokenizer, error) {
	path := filepath.Join(dir, "tokenizer.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load tokenizer: %w: %s needs the tokenizer.json of a Hugging Face model", err, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	t, err := build(data, dir)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	cfg, template, err := readConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	t.configure(cfg, template, readGenerationEOS(dir))
	return t, nil
}

// build makes a Tokenizer from the contents of tokenizer.json.
func build(data []byte, dir string) (*Tokenizer, error) {
	spec, err := readSpec(data)
	if err != nil {
		return nil, fmt.Errorf("%w: the file is damaged or not a Hugging Face tokenizer.json", err)
	}
	m := &spec.model
	if m.Type != "BPE" {
		return nil, fmt.Errorf("model type %q: %w: only BPE models (Qwen, Llama 3, Gemma) are implemented", m.Type, ErrUnsupported)
	}
	switch {
	case m.Dropout != nil && *m.Dropout != 0:
		return nil, fmt.Errorf("BPE dropout: %w", ErrUnsupported)
	case m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "":
		return nil, fmt.Errorf("BPE continuing_subword_prefix: %w", ErrUnsupported)
	case m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "":
		return nil, fmt.Errorf("BPE end_of_word_suffix: %w", ErrUnsupported)
	}
	t := &Tokenizer{dir: dir, bos: -1}
	if t.normalize, err = buildNormalizer(spec.Normalizer); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	if t.pre, err = buildPreTokenizer(spec.PreTokenizer); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	if t.prefix, t.suffix, err = buildPostProcessor(spec.PostProcessor); err != nil {
		return nil, fmt.Errorf("post_processor: %w", err)
	}
	if t.decoders, err = buildDecoder(spec.Decoder); err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	if t.model, err = newBPE(m, t.pre.byteLevel); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}

	size := 0
	for _, id := range m.vocab {
		size = max(size, int(id)+1)
	}
	for _, a := range spec.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("added token %q has negative id %d", a.Content, a.ID)
		}
		size = max(size, a.ID+1)
	}
	t.tokens = make([]string, size)
	t.kinds = make([]uint8, size)
	t.special = make([]bool, size)
	for tok, id := range m.vocab {
		t.tokens[id], t.kinds[id] = tok, tokenModel
	}
	t.addedID = make(map[string]int, len(spec.AddedTokens))
	specials := map[string]bool{}
	var raw, normalized []addedToken
	for _, a := range spec.AddedTokens {
		t.tokens[a.ID], t.kinds[a.ID] = a.Content, tokenAdded
		t.addedID[a.Content] = a.ID
		if a.Special {
			specials[a.Content] = true
		}
		if a.Normalized {
			if t.normalize != nil {
				a.Content = t.normalize(a.Content)
			}
			normalized = append(normalized, a)
		} else {
			raw = append(raw, a)
		}
	}
	for id, tok := range t.tokens {
		t.special[id] = t.kinds[id] != tokenNone && specials[tok]
	}
	for _, id := range slices.Concat(t.prefix, t.suffix) {
		if id < 0 || id >= size {
			return nil, fmt.Errorf("post_processor: token id %d is outside the vocab", id)
		}
	}
	t.added = newMatcher(raw)
	t.addedNorm = newMatcher(normalized)
	return t, nil
}

// endTokens are end-of-turn or end-of-text tokens that EOS adds when the vocab has them
// as special tokens, because chat models stop on them although tokenizer_config.json
// names only one eos_token.
var endTokens = []string{"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>"}

func (t *Tokenizer) configure(cfg configSpec, template string, genEOS []int) {
	if id, ok := t.TokenID(string(cfg.BOSToken)); ok && cfg.BOSToken != "" {
		t.bos = id
	}
	addEOS := func(id int) {
		if id >= 0 && id < len(t.tokens) && t.kinds[id] != tokenNone && !slices.Contains(t.eos, id) {
			t.eos = append(t.eos, id)
		}
	}
	if id, ok := t.TokenID(string(cfg.EOSToken)); ok && cfg.EOSToken != "" {
		addEOS(id)
	}
	for _, id := range genEOS {
		addEOS(id)
	}
	for _, tok := range endTokens {
		if id, ok := t.addedID[tok]; ok && t.special[id] {
			addEOS(id)
		}
	}
	t.chatVars = map[string]string{}
	for name, tok := range map[string]tokenName{
		"bos_token": cfg.BOSToken, "eos_token": cfg.EOSToken,
		"pad_token": cfg.PadToken, "unk_token": cfg.UnkToken,
	} {
		if tok != "" {
			t.chatVars[name] = string(tok)
		}
	}
	if template != "" {
		t.chat, t.chatErr = jinja.Compile(template)
	}
}

// scratch holds the buffers of one Encode call; they are pooled so that encoding
// allocates little more than its result.
type scratch struct {
	segs, segs2   []segment
	spans, spans2 []span
	pieces        []piece
	ids           []int32
	ranks         []uint64
	syms          []symbol
	heap          []mergeItem
	buf           []byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Encode returns the token ids of text. With addSpecial it adds what the tokenizer.json
// post-processor adds (Gemma's <bos>; nothing for Qwen 3 and these Llama 3 files), which is
// what transformers' tokenizer(text) does: transformers 5 ignores add_bos_token in
// tokenizer_config.json for these tokenizers, and so does Encode.
//
// Text that is not valid UTF-8 is encoded without panicking; byte-level tokenizers keep
// its bytes, which Decode gives back.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	out := make([]int, 0, len(text)/3+len(t.prefix)+len(t.suffix)+1)
	if addSpecial {
		out = append(out, t.prefix...)
	}
	segs := t.added.split(text, sc.segs[:0])
	for _, sg := range segs {
		if sg.id >= 0 {
			out = append(out, int(sg.id))
			continue
		}
		piece := text[sg.start:sg.end]
		if t.normalize != nil {
			piece = t.normalize(piece)
		}
		if t.addedNorm == nil {
			out = t.encodePiece(piece, sc, out)
			continue
		}
		segs2 := t.addedNorm.split(piece, sc.segs2[:0])
		for _, sg2 := range segs2 {
			if sg2.id >= 0 {
				out = append(out, int(sg2.id))
			} else {
				out = t.encodePiece(piece[sg2.start:sg2.end], sc, out)
			}
		}
		sc.segs2 = segs2[:0]
	}
	sc.segs = segs[:0]
	if addSpecial {
		out = append(out, t.suffix...)
	}
	return out
}

// encodePiece pre-tokenizes normalized text and appends the ids of its words.
func (t *Tokenizer) encodePiece(text string, sc *scratch, out []int) []int {
	spans := append(sc.spans[:0], span{0, len(text)})
	for _, s := range t.pre.splits {
		spans = s.split(text, spans, sc)
	}
	for _, sp := range spans {
		out = t.model.encodeWord(text[sp.start:sp.end], sc, out)
	}
	sc.spans = spans[:0]
	return out
}

// Decode returns the text of ids as the tokenizers library decodes it. Ids outside the
// vocab are skipped; with skipSpecial so are special tokens. Bytes that do not form valid
// UTF-8 become U+FFFD.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if id < 0 || id >= len(t.tokens) || t.kinds[id] == tokenNone || skipSpecial && t.special[id] {
			continue
		}
		toks = append(toks, t.tokens[id])
	}
	return t.decodeTokens(toks)
}

// VocabSize returns the largest token id plus one, counting added tokens.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a token given its text as it appears in tokenizer.json (so
// "Ġhello" for byte-level vocabularies), looking at added tokens first.
func (t *Tokenizer) TokenID(s string) (int, bool) {
	if id, ok := t.addedID[s]; ok {
		return id, true
	}
	id, ok := t.model.vocab[s]
	return int(id), ok
}

// EOS returns the ids that end generation, without duplicates: eos_token from
// tokenizer_config.json first, then eos_token_id from generation_config.json when the
// directory has one, then whichever of <|im_end|>, <|endoftext|>, <|eot_id|>, <|eom_id|>,
// <|end_of_text|>, <end_of_turn> and <eos> are special tokens of the vocab. That gives
// Qwen 3 [<|im_end|> <|endoftext|>], Llama 3 [<|end_of_text|> <|eot_id|>] and Gemma 3
// [<end_of_turn> <eos>], the sets of their generation configs. The caller may keep the
// slice but must not modify it.
func (t *Tokenizer) EOS() []int { return t.eos }

// BOS returns the id of bos_token from tokenizer_config.json, if it names one.
func (t *Tokenizer) BOS() (int, bool) { return t.bos, t.bos >= 0 }

// decodeTokens runs the decoder chain on token texts.
func (t *Tokenizer) decodeTokens(toks []string) string {
	if len(t.decoders) == 0 {
		return strings.Join(toks, " ")
	}
	for _, d := range t.decoders {
		toks = d.apply(toks)
	}
	return strings.Join(toks, "")
}
