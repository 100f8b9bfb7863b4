package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/text/unicode/norm"
)

// fileSpec is what Load reads from tokenizer.json.
type fileSpec struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	model         modelSpec
}

// modelSpec is tokenizer.json's model; vocab and merges are decoded by the scanner.
type modelSpec struct {
	Type                    string   `json:"type"`
	Dropout                 *float64 `json:"dropout"`
	UnkToken                *string  `json:"unk_token"`
	ContinuingSubwordPrefix *string  `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string  `json:"end_of_word_suffix"`
	FuseUnk                 bool     `json:"fuse_unk"`
	ByteFallback            bool     `json:"byte_fallback"`
	IgnoreMerges            bool     `json:"ignore_merges"`
	vocab                   map[string]int32
	merges                  map[uint64]uint64
}

// componentSpec holds the fields of any normalizer, pre-tokenizer, post-processor or
// decoder that Load supports; Type says which.
type componentSpec struct {
	Type          string            `json:"type"`
	Normalizers   []json.RawMessage `json:"normalizers"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Processors    []json.RawMessage `json:"processors"`
	Decoders      []json.RawMessage `json:"decoders"`
	Pattern       patternSpec       `json:"pattern"`
	Content       string            `json:"content"`
	Behavior      string            `json:"behavior"`
	Invert        bool              `json:"invert"`
	AddPrefix     bool              `json:"add_prefix_space"`
	UseRegex      *bool             `json:"use_regex"`
	Single        []templatePiece   `json:"single"`
	SpecialTokens map[string]struct {
		IDs []int `json:"ids"`
	} `json:"special_tokens"`
}

type patternSpec struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type templatePiece struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

// configSpec is what Load reads from tokenizer_config.json.
type configSpec struct {
	BOSToken     tokenName       `json:"bos_token"`
	EOSToken     tokenName       `json:"eos_token"`
	PadToken     tokenName       `json:"pad_token"`
	UnkToken     tokenName       `json:"unk_token"`
	ChatTemplate json.RawMessage `json:"chat_template"`
}

// tokenName is a special token in tokenizer_config.json: null, a string, or an object with
// a "content" field (older configs serialize AddedToken).
type tokenName string

// UnmarshalJSON accepts the three forms of a special token.
func (n *tokenName) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		*n = ""
	case string:
		*n = tokenName(v)
	case map[string]any:
		s, _ := v["content"].(string)
		*n = tokenName(s)
	default:
		return fmt.Errorf("special token is %T, want string or object", v)
	}
	return nil
}

// readSpec parses tokenizer.json in one pass: the vocab and merges of a BPE model are
// decoded as the scanner meets them, everything else is handed to encoding/json.
func readSpec(data []byte) (*fileSpec, error) {
	top := map[string]json.RawMessage{}
	modelRaw := map[string]json.RawMessage{}
	var vocab map[string]int32
	var merges *mergeTexts
	s := &scanner{data: data}
	err := s.object(func(key []byte) error {
		if string(key) != "model" {
			raw, err := s.raw()
			top[string(key)] = raw
			return err
		}
		return s.object(func(key []byte) error {
			var err error
			switch {
			case string(key) == "vocab" && s.peek() == '{':
				if vocab, err = parseVocab(s); err != nil {
					return fmt.Errorf("model.vocab: %w", err)
				}
			case string(key) == "merges" && s.peek() == '[':
				if merges, err = parseMerges(s); err != nil {
					return fmt.Errorf("model.merges: %w", err)
				}
			default:
				modelRaw[string(key)], err = s.raw()
			}
			return err
		})
	})
	if err == nil {
		err = s.end()
	}
	if err != nil {
		return nil, err
	}
	spec := &fileSpec{}
	if err := unmarshalFields(top, spec); err != nil {
		return nil, err
	}
	if err := unmarshalFields(modelRaw, &spec.model); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if spec.model.Type == "" && merges != nil {
		spec.model.Type = "BPE" // the library infers BPE from merges when type is absent
	}
	if spec.model.Type != "BPE" {
		if spec.model.Type == "" {
			return nil, errors.New("no model: is this a Hugging Face tokenizer.json?")
		}
		return spec, nil // Load reports the unsupported type with the file name
	}
	if vocab == nil {
		return nil, errors.New("model.vocab: want an object of token ids")
	}
	if merges == nil {
		merges = &mergeTexts{}
	}
	spec.model.vocab = vocab
	if spec.model.merges, err = merges.resolve(vocab); err != nil {
		return nil, fmt.Errorf("model.merges: %w", err)
	}
	return spec, nil
}

// unmarshalFields decodes an object given as raw fields into v with encoding/json.
func unmarshalFields(fields map[string]json.RawMessage, v any) error {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for k, raw := range fields {
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		key, _ := json.Marshal(k)
		buf.Write(key)
		buf.WriteByte(':')
		buf.Write(raw)
	}
	buf.WriteByte('}')
	return json.Unmarshal(buf.Bytes(), v)
}

func parseVocab(s *scanner) (map[string]int32, error) {
	vocab := make(map[string]int32, 1<<10)
	err := s.object(func(key []byte) error {
		id, err := s.int()
		if err != nil {
			return err
		}
		if id < 0 {
			return fmt.Errorf("token %q has negative id %d", key, id)
		}
		vocab[string(key)] = int32(id)
		return nil
	})
	return vocab, err
}

// mergeTexts are the merges as text: each is a+b in one arena, split where b starts.
type mergeTexts struct {
	arena []byte
	ends  []mergeText
}

type mergeText struct{ start, split, end int32 }

// parseMerges decodes merges given as "a b" strings or ["a", "b"] pairs. Lines starting
// with "#version" are skipped and do not count as ranks, as in the library.
func parseMerges(s *scanner) (*mergeTexts, error) {
	m := &mergeTexts{}
	err := s.array(func() error {
		var err error
		start := len(m.arena)
		split := 0
		switch s.peek() {
		case '"':
			if m.arena, err = s.str(m.arena); err != nil {
				return err
			}
			line := m.arena[start:]
			if bytes.HasPrefix(line, []byte("#version")) {
				m.arena = m.arena[:start]
				return nil
			}
			split = bytes.IndexByte(line, ' ')
			if split < 0 || bytes.IndexByte(line[split+1:], ' ') >= 0 {
				return fmt.Errorf("merge %d is %q, want two tokens separated by one space", len(m.ends)+1, line)
			}
			m.arena = append(m.arena[:start+split], m.arena[start+split+1:]...)
		case '[':
			n := 0
			err = s.array(func() error {
				if n == 1 {
					split = len(m.arena) - start
				}
				n++
				var err error
				m.arena, err = s.str(m.arena)
				return err
			})
			if err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("merge %d has %d tokens, want 2", len(m.ends)+1, n)
			}
		default:
			return s.errorf("merge %d is neither a string nor a pair", len(m.ends)+1)
		}
		if len(m.arena) > math.MaxInt32 {
			return errors.New("merges too large")
		}
		m.ends = append(m.ends, mergeText{int32(start), int32(start + split), int32(len(m.arena))})
		return nil
	})
	return m, err
}

// resolve builds the rank map from the merge texts. Looking up a million token strings
// dominates loading Gemma 3, so the lookups run on all CPUs and only the inserts are serial.
func (m *mergeTexts) resolve(vocab map[string]int32) (map[uint64]uint64, error) {
	keys := make([]uint64, len(m.ends))
	vals := make([]uint64, len(m.ends))
	errs := make([]error, runtime.GOMAXPROCS(0))
	chunk := (len(m.ends) + len(errs) - 1) / len(errs)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for i := w * chunk; i < min(len(m.ends), (w+1)*chunk); i++ {
				e := m.ends[i]
				a, ok1 := vocab[string(m.arena[e.start:e.split])]
				b, ok2 := vocab[string(m.arena[e.split:e.end])]
				ab, ok3 := vocab[string(m.arena[e.start:e.end])]
				if !ok1 || !ok2 || !ok3 {
					errs[w] = fmt.Errorf("merge %d (%q + %q) uses a token that is not in the vocab",
						i+1, m.arena[e.start:e.split], m.arena[e.split:e.end])
					return
				}
				keys[i] = uint64(uint32(a))<<32 | uint64(uint32(b))
				vals[i] = uint64(i)<<32 | uint64(uint32(ab))
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	merges := make(map[uint64]uint64, len(keys))
	for i, k := range keys {
		merges[k] = vals[i] // a pair listed twice keeps its last rank
	}
	return merges, nil
}

// readConfig reads tokenizer_config.json, which is optional, and the chat template, which
// newer checkpoints keep in chat_template.jinja.
func readConfig(dir string) (cfg configSpec, template string, err error) {
	path := filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return cfg, "", fmt.Errorf("read %s: %w", path, err)
	default:
		if err := json.Unmarshal(data, &cfg); err != nil {
			return cfg, "", fmt.Errorf("parse %s: %w: fix or delete the file", path, err)
		}
		if template, err = chatTemplate(cfg.ChatTemplate); err != nil {
			return cfg, "", fmt.Errorf("parse %s: chat_template: %w", path, err)
		}
	}
	if template == "" {
		if data, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
			template = string(data)
		}
	}
	return cfg, template, nil
}

// chatTemplate extracts the template from a chat_template field: a string, or a list of
// named templates of which the one named "default" is used, as in transformers.
func chatTemplate(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", errors.New("want a string or a list of {name, template}")
	}
	for _, t := range named {
		if t.Name == "default" {
			return t.Template, nil
		}
	}
	return "", nil
}

// readGenerationEOS returns eos_token_id from generation_config.json when there is one.
func readGenerationEOS(dir string) []int {
	data, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if err != nil {
		return nil
	}
	var gen struct {
		EOS json.RawMessage `json:"eos_token_id"`
	}
	if json.Unmarshal(data, &gen) != nil {
		return nil
	}
	var one int
	if json.Unmarshal(gen.EOS, &one) == nil {
		return []int{one}
	}
	var many []int
	_ = json.Unmarshal(gen.EOS, &many)
	return many
}

// parseComponent decodes a normalizer, pre-tokenizer, post-processor or decoder;
// a missing or null component gives nil.
func parseComponent(raw json.RawMessage) (*componentSpec, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c componentSpec
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// normalizer transforms text before pre-tokenization.
type normalizer func(string) string

func buildNormalizer(raw json.RawMessage) (normalizer, error) {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "NFC":
		return norm.NFC.String, nil
	case "NFD":
		return norm.NFD.String, nil
	case "NFKC":
		return norm.NFKC.String, nil
	case "NFKD":
		return norm.NFKD.String, nil
	case "Replace":
		if c.Pattern.String == nil || *c.Pattern.String == "" {
			return nil, fmt.Errorf("normalizer Replace without a String pattern: %w", ErrUnsupported)
		}
		from, to := *c.Pattern.String, c.Content
		return func(s string) string { return strings.ReplaceAll(s, from, to) }, nil
	case "Sequence":
		var steps []normalizer
		for _, raw := range c.Normalizers {
			n, err := buildNormalizer(raw)
			if err != nil {
				return nil, err
			}
			if n != nil {
				steps = append(steps, n)
			}
		}
		return func(s string) string {
			for _, n := range steps {
				s = n(s)
			}
			return s
		}, nil
	}
	return nil, fmt.Errorf("normalizer %q: %w", c.Type, ErrUnsupported)
}

// preTokenizer splits normalized text into words for the model.
type preTokenizer struct {
	splits    []*splitter
	byteLevel bool
}

func buildPreTokenizer(raw json.RawMessage) (*preTokenizer, error) {
	p := &preTokenizer{}
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return p, err
	}
	return p, p.add(c)
}

func (p *preTokenizer) add(c *componentSpec) error {
	if p.byteLevel {
		return fmt.Errorf("pre-tokenizer %q after ByteLevel: %w", c.Type, ErrUnsupported)
	}
	switch c.Type {
	case "Sequence":
		for _, raw := range c.Pretokenizers {
			sub, err := parseComponent(raw)
			if err != nil {
				return err
			}
			if sub != nil {
				if err := p.add(sub); err != nil {
					return err
				}
			}
		}
		return nil
	case "Split":
		s, err := newSplitter(c.Pattern, c.Behavior, c.Invert)
		if err != nil {
			return err
		}
		p.splits = append(p.splits, s)
		return nil
	case "ByteLevel":
		if c.AddPrefix {
			return fmt.Errorf("ByteLevel pre-tokenizer with add_prefix_space: %w", ErrUnsupported)
		}
		if c.UseRegex == nil || *c.UseRegex {
			re := gpt2Pattern
			s, err := newSplitter(patternSpec{Regex: &re}, "Isolated", false)
			if err != nil {
				return err
			}
			p.splits = append(p.splits, s)
		}
		p.byteLevel = true
		return nil
	}
	return fmt.Errorf("pre-tokenizer %q: %w", c.Type, ErrUnsupported)
}

// buildPostProcessor returns the ids a single sequence gets before and after it.
func buildPostProcessor(raw json.RawMessage) (prefix, suffix []int, err error) {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return nil, nil, err
	}
	switch c.Type {
	case "ByteLevel":
		return nil, nil, nil // only trims offsets
	case "Sequence":
		for _, raw := range c.Processors {
			p, s, err := buildPostProcessor(raw)
			if err != nil {
				return nil, nil, err
			}
			if len(p)+len(s) > 0 && len(prefix)+len(suffix) > 0 {
				return nil, nil, fmt.Errorf("several post-processors add tokens: %w", ErrUnsupported)
			}
			prefix, suffix = append(prefix, p...), append(suffix, s...)
		}
		return prefix, suffix, nil
	case "TemplateProcessing":
		seen := false
		for _, p := range c.Single {
			switch {
			case p.Sequence != nil:
				if seen {
					return nil, nil, fmt.Errorf("template repeats the sequence: %w", ErrUnsupported)
				}
				seen = true
			case p.SpecialToken != nil:
				tok, ok := c.SpecialTokens[p.SpecialToken.ID]
				if !ok {
					return nil, nil, fmt.Errorf("template special token %q is not in special_tokens", p.SpecialToken.ID)
				}
				if seen {
					suffix = append(suffix, tok.IDs...)
				} else {
					prefix = append(prefix, tok.IDs...)
				}
			}
		}
		return prefix, suffix, nil
	}
	return nil, nil, fmt.Errorf("post-processor %q: %w", c.Type, ErrUnsupported)
}

// decoderStep is one decoder of the chain; each maps token strings to token strings like
// the library's Decoder::decode_chain.
type decoderStep struct {
	kind     string // ByteLevel, Replace, ByteFallback or Fuse
	from, to string // Replace
}

func buildDecoder(raw json.RawMessage) ([]decoderStep, error) {
	c, err := parseComponent(raw)
	if err != nil || c == nil {
		return nil, err
	}
	switch c.Type {
	case "ByteLevel", "ByteFallback", "Fuse":
		return []decoderStep{{kind: c.Type}}, nil
	case "Replace":
		if c.Pattern.String == nil || *c.Pattern.String == "" {
			return nil, fmt.Errorf("decoder Replace without a String pattern: %w", ErrUnsupported)
		}
		return []decoderStep{{kind: c.Type, from: *c.Pattern.String, to: c.Content}}, nil
	case "Sequence":
		var steps []decoderStep
		for _, raw := range c.Decoders {
			sub, err := buildDecoder(raw)
			if err != nil {
				return nil, err
			}
			steps = append(steps, sub...)
		}
		return steps, nil
	}
	return nil, fmt.Errorf("decoder %q: %w", c.Type, ErrUnsupported)
}
