package tokenizer

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/text/unicode/norm"
)

// tinyJSON is a minimal byte-level BPE tokenizer.json for the error and unit cases.
const tinyJSON = `{
  "added_tokens": [{"id": 5, "content": "<s>", "special": true}, {"id": 6, "content": "<x>"}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4}, "merges": ["a b", ["Ġ", "ab"]]}
}`

// writeModel writes tokenizer.json (and tokenizer_config.json unless config is "")
// into a temporary directory.
func writeModel(t *testing.T, tokenizer, config string) string {
	t.Helper()
	dir := t.TempDir()
	if tokenizer != "" {
		if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(tokenizer), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if config != "" {
		if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadErrors(t *testing.T) {
	replace := func(old, new string) string {
		if !strings.Contains(tinyJSON, old) {
			t.Fatalf("tinyJSON lacks %q", old)
		}
		return strings.Replace(tinyJSON, old, new, 1)
	}
	for _, tc := range []struct {
		name      string
		tokenizer string // "" writes no tokenizer.json
		config    string
		wantIs    error
		wantText  []string
	}{
		{name: "missing tokenizer.json", wantIs: fs.ErrNotExist, wantText: []string{"tokenizer.json", "Hugging Face"}},
		{name: "malformed JSON", tokenizer: `{"model": {"type": "BPE", "vocab": {"a": 0`, wantText: []string{"tokenizer.json", "invalid JSON", "damaged"}},
		{name: "trailing data", tokenizer: tinyJSON + "}", wantText: []string{"trailing data"}},
		{name: "not an object", tokenizer: `[]`, wantText: []string{"invalid JSON"}},
		{name: "no model", tokenizer: `{"added_tokens": []}`, wantText: []string{"no model"}},
		{name: "WordPiece", tokenizer: `{"model": {"type": "WordPiece", "vocab": {"a": 0}}}`, wantIs: ErrUnsupported, wantText: []string{`"WordPiece"`, "only BPE"}},
		{name: "Unigram", tokenizer: `{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}`, wantIs: ErrUnsupported, wantText: []string{`"Unigram"`}},
		{name: "vocab id not a number", tokenizer: replace(`"a": 0,`, `"a": "zero",`), wantText: []string{"model.vocab"}},
		{name: "merge of unknown token", tokenizer: replace(`"a b"`, `"a c"`), wantText: []string{"merge 1", "not in the vocab"}},
		{name: "merge with three parts", tokenizer: replace(`"a b"`, `"a b c"`), wantText: []string{"merge 1", "one space"}},
		{name: "unsupported normalizer", tokenizer: replace(`"added_tokens"`, `"normalizer": {"type": "Lowercase"}, "added_tokens"`), wantIs: ErrUnsupported, wantText: []string{"normalizer", "Lowercase"}},
		{name: "unsupported pre-tokenizer", tokenizer: replace(`"type": "ByteLevel", "add_prefix_space": false`, `"type": "Metaspace", "add_prefix_space": false`), wantIs: ErrUnsupported, wantText: []string{"Metaspace"}},
		{name: "unsupported decoder", tokenizer: replace(`{"type": "ByteLevel"}`, `{"type": "Strip"}`), wantIs: ErrUnsupported, wantText: []string{"decoder", "Strip"}},
		{name: "unsupported post-processor", tokenizer: replace(`"added_tokens"`, `"post_processor": {"type": "BertProcessing"}, "added_tokens"`), wantIs: ErrUnsupported, wantText: []string{"BertProcessing"}},
		{name: "dropout", tokenizer: replace(`"type": "BPE",`, `"type": "BPE", "dropout": 0.1,`), wantIs: ErrUnsupported, wantText: []string{"dropout"}},
		{name: "bad split regex", tokenizer: replace(`"pre_tokenizer": {`, `"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated"}]}, "x": {`), wantText: []string{"split regex"}},
		{name: "malformed tokenizer_config.json", tokenizer: tinyJSON, config: `{"eos_token": `, wantText: []string{"tokenizer_config.json", "fix or delete"}},
		{name: "bad chat_template type", tokenizer: tinyJSON, config: `{"chat_template": 3}`, wantText: []string{"chat_template"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeModel(t, tc.tokenizer, tc.config)
			tok, err := Load(dir)
			if err == nil {
				t.Fatalf("Load = %v, nil; want an error", tok)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Load error %q is not %v", err, tc.wantIs)
			}
			for _, s := range tc.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Load error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestChatTemplateErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   string
		wantIs   error
		wantText string
	}{
		{name: "no config", wantIs: ErrNoChatTemplate, wantText: "instruction-tuned"},
		{name: "config without template", config: `{"eos_token": "<s>"}`, wantIs: ErrNoChatTemplate},
		{name: "template does not compile", config: `{"chat_template": "{% for %}"}`, wantText: "compile"},
		{name: "template raises", config: `{"chat_template": "{{ raise_exception('roles must alternate') }}"}`, wantText: "roles must alternate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Load(writeModel(t, tinyJSON, tc.config))
			if err != nil {
				t.Fatal(err)
			}
			got, err := tok.ApplyChatTemplate([]Message{{"user", "hi"}}, true)
			if err == nil {
				t.Fatalf("ApplyChatTemplate = %q, nil; want an error", got)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("ApplyChatTemplate error %q is not %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("ApplyChatTemplate error %q does not mention %q", err, tc.wantText)
			}
		})
	}
}

func TestTiny(t *testing.T) {
	dir := writeModel(t, tinyJSON, `{"eos_token": {"content": "<s>"}, "chat_template": "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"}`)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		text string
		want []int
	}{
		{name: "merge", text: "ab", want: []int{2}},
		{name: "second merge", text: " ab", want: []int{4}},
		{name: "no merge", text: "ba", want: []int{1, 0}},
		{name: "unknown byte dropped, neighbours merge", text: "acb", want: []int{2}},
		{name: "added tokens", text: "a<s>b<x>", want: []int{0, 5, 1, 6}},
		{name: "empty", text: "", want: []int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tok.Encode(tc.text, true); !slices.Equal(got, tc.want) {
				t.Errorf("Encode(%q) = %v; want %v", tc.text, got, tc.want)
			}
		})
	}
	if got, want := tok.Decode([]int{4, 5, 0, 99, -1, 6}, false), " ab<s>a<x>"; got != want {
		t.Errorf("Decode = %q; want %q", got, want)
	}
	if got, want := tok.Decode([]int{4, 5, 0, 6}, true), " aba<x>"; got != want {
		t.Errorf("Decode(skip special) = %q; want %q", got, want)
	}
	if got, want := tok.VocabSize(), 7; got != want {
		t.Errorf("VocabSize() = %d; want %d", got, want)
	}
	if got, want := tok.EOS(), []int{5}; !slices.Equal(got, want) {
		t.Errorf("EOS() = %v; want %v", got, want)
	}
	if id, ok := tok.BOS(); ok {
		t.Errorf("BOS() = %d, true; want none", id)
	}
	if got, err := tok.ApplyChatTemplate([]Message{{"user", "hi"}}, false); err != nil || got != "[user]hi<s>" {
		t.Errorf("ApplyChatTemplate = %q, %v; want %q", got, err, "[user]hi<s>")
	}
}

func TestSpecialTokens(t *testing.T) {
	for _, tc := range []struct {
		model   string
		bos     string // "" for none
		eos     []string
		size    int
		lookups map[string]int
	}{
		{model: "qwen3", eos: []string{"<|im_end|>", "<|endoftext|>"}, size: 151669, lookups: map[string]int{"<|im_start|>": 151644, "Ġthe": 279}},
		{model: "llama3", bos: "<|begin_of_text|>", eos: []string{"<|end_of_text|>", "<|eot_id|>"}, size: 128256, lookups: map[string]int{"<|eot_id|>": 128009}},
		{model: "gemma3", bos: "<bos>", eos: []string{"<end_of_turn>", "<eos>"}, size: 262145, lookups: map[string]int{"<bos>": 2, "<0x0A>": 248, "<image_soft_token>": 262144}},
	} {
		t.Run(tc.model, func(t *testing.T) {
			tok := loadModel(t, tc.model)
			bos, ok := tok.BOS()
			if want := tok.addedID[tc.bos]; ok != (tc.bos != "") || ok && bos != want {
				t.Errorf("BOS() = %d, %v; want %q (%d)", bos, ok, tc.bos, want)
			}
			var want []int
			for _, s := range tc.eos {
				want = append(want, tok.addedID[s])
			}
			if got := tok.EOS(); !slices.Equal(got, want) {
				t.Errorf("EOS() = %v; want %v %q", got, want, tc.eos)
			}
			if got := tok.VocabSize(); got != tc.size {
				t.Errorf("VocabSize() = %d; want %d", got, tc.size)
			}
			for s, want := range tc.lookups {
				if got, ok := tok.TokenID(s); !ok || got != want {
					t.Errorf("TokenID(%q) = %d, %v; want %d, true", s, got, ok, want)
				}
			}
			if id, ok := tok.TokenID("no such token ☃☃☃"); ok {
				t.Errorf("TokenID(unknown) = %d, true; want false", id)
			}
		})
	}
}

// TestStreamDecoder checks that streamed text adds up to Decode and that no chunk shows a
// replacement char the full decoding does not have.
func TestStreamDecoder(t *testing.T) {
	lines, texts := corpus(t)
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			tok := loadModel(t, name)
			var seqs [][]int
			for _, s := range slices.Concat(lines, texts) {
				seqs = append(seqs, tok.Encode(s, true))
			}
			seqs = append(seqs, randomIDs(tok, 400)...)
			d := tok.NewStreamDecoder()
			bad := 0
			for _, ids := range seqs {
				want := tok.Decode(ids, false)
				var b strings.Builder
				for _, id := range ids {
					chunk := d.Add(id)
					if !utf8.ValidString(chunk) || strings.ContainsRune(chunk, utf8.RuneError) && !strings.ContainsRune(want, utf8.RuneError) {
						if bad++; bad <= 5 {
							t.Errorf("Add(%d) of %v = %q, a broken char; full decoding is %q", id, ids, chunk, shorten(want))
						}
					}
					b.WriteString(chunk)
				}
				b.WriteString(d.Flush())
				if got := b.String(); got != want {
					if bad++; bad <= 5 {
						t.Errorf("streamed %v = %q; Decode gives %q", shortenIDs(ids), shorten(got), shorten(want))
					}
				}
			}
		})
	}
}

func TestStreamDecoderHoldsSplitChars(t *testing.T) {
	tok := loadModel(t, "gemma3")
	var ids []int
	for _, b := range []byte("€") { // three <0xNN> tokens: gemma's vocab has no single token for some chars
		id, ok := tok.TokenID(string([]byte{'<', '0', 'x', "0123456789ABCDEF"[b>>4], "0123456789ABCDEF"[b&15], '>'}))
		if !ok {
			t.Fatalf("no byte token for %#x", b)
		}
		ids = append(ids, id)
	}
	d := tok.NewStreamDecoder()
	var got []string
	for _, id := range ids {
		got = append(got, d.Add(id))
	}
	word, ok := tok.TokenID("hello")
	if !ok {
		t.Fatal(`no token "hello"`)
	}
	got = append(got, d.Add(word), d.Flush())
	if want := []string{"", "", "", "€hello", ""}; !slices.Equal(got, want) {
		t.Errorf("chunks = %q; want %q", got, want)
	}
}

// TestMergeStrategies checks that the rescanning merge gives what the heap merge gives.
func TestMergeStrategies(t *testing.T) {
	lines, _ := corpus(t)
	for _, name := range models {
		t.Run(name, func(t *testing.T) {
			tok := loadModel(t, name)
			sc := new(scratch)
			for _, line := range lines {
				for _, w := range tok.words(line) {
					if tok.pre.byteLevel {
						w = decodeByteLevel(w)
					}
					if len(tok.model.symbols(w, sc)) < 2 {
						continue
					}
					small := tok.model.mergeSmall(slices.Clone(tok.model.symbols(w, sc)), sc)
					heap := tok.model.mergeHeap(slices.Clone(tok.model.symbols(w, sc)), sc)
					if !slices.Equal(small, heap) {
						t.Fatalf("merges of %q: rescanning gives %v, heap gives %v", w, small, heap)
					}
				}
			}
		})
	}
}

func decodeByteLevel(w string) string {
	return string(appendByteLevelDecoded(nil, w))
}

func TestAppendLossy(t *testing.T) {
	// Expected values are Rust's String::from_utf8_lossy.
	for _, tc := range []struct {
		name string
		in   string
		want string
	}{
		{name: "valid", in: "a€😀", want: "a€😀"},
		{name: "truncated 3-byte", in: "\xE2\x82A", want: "\uFFFDA"},
		{name: "truncated 4-byte", in: "\xF0\x90\x80", want: "\uFFFD"},
		{name: "overlong", in: "\xC0\x80", want: "\uFFFD\uFFFD"},
		{name: "surrogate", in: "\xED\xA0\x80", want: "\uFFFD\uFFFD\uFFFD"},
		{name: "above U+10FFFF", in: "\xF4\x90\x80\x80", want: "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{name: "stray continuation", in: "a\x80\x80b", want: "a\uFFFD\uFFFDb"},
		{name: "lead at end", in: "ab\xE2", want: "ab\uFFFD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(appendLossy(nil, []byte(tc.in))); got != tc.want {
				t.Errorf("appendLossy(%q) = %q; want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestConcurrentEncode encodes from several goroutines; run with -race it checks that
// Encode shares no mutable state.
func TestConcurrentEncode(t *testing.T) {
	lines, _ := corpus(t)
	tok := loadModel(t, "qwen3")
	want := make([][]int, len(lines))
	for i, l := range lines {
		want[i] = tok.Encode(l, true)
	}
	var wg sync.WaitGroup
	got := make([][][]int, 4)
	for g := range got {
		wg.Go(func() {
			for _, l := range lines {
				got[g] = append(got[g], tok.Encode(l, true))
			}
		})
	}
	wg.Wait()
	for g := range got {
		if diff := cmp.Diff(want, got[g]); diff != "" {
			t.Errorf("goroutine %d encodings differ (-sequential +concurrent):\n%s", g, diff)
		}
	}
}

// FuzzEncode checks that Encode and Decode never panic and that decoding an encoding
// gives the text back, up to what the normalizers change: NFC for Qwen 3, "▁" read as a
// space for Gemma 3.
func FuzzEncode(f *testing.F) {
	for _, frags := range fragments {
		for _, s := range frags {
			f.Add(s)
		}
	}
	f.Add("\xff\xfe invalid \xe2\x82")
	f.Add("<|im_start|>\xc3")
	toks := map[string]*Tokenizer{}
	for _, name := range models {
		toks[name] = loadModel(f, name)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, tok := range toks {
			tok.Decode(tok.Encode(s, true), true)
			if !utf8.ValidString(s) {
				continue
			}
			want := s
			switch name {
			case "qwen3":
				want = norm.NFC.String(s)
			case "gemma3":
				want = strings.ReplaceAll(s, "▁", " ")
			}
			ids := tok.Encode(s, false)
			if got := tok.Decode(ids, false); got != want {
				t.Errorf("%s: Decode(Encode(%q)) = %q; want %q (ids %v)", name, s, got, want, ids)
			}
		}
	})
}
