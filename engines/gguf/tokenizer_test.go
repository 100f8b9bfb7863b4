package gguf

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/tokenizer"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// smolGGUF is the file `just setup` installs, relative to the repository root.
const smolGGUF = ".cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"

// tokenizerCorpus is the tokenizer package's corpus ({"lines": [...], "texts": [...]}), as
// TestCorpusSize -corpus-out writes it; goldenTokens are llama.cpp's ids for it, in the same
// order (both from just golden-gguf-tokens).
const (
	tokenizerCorpus = "testdata/tokenizer_corpus.json.gz"
	goldenTokens    = "testdata/smollm2_llamacpp_tokens.json.gz"
)

func readGz(t *testing.T, path string, v any) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v: run `just golden-gguf-tokens`", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := json.NewDecoder(zr).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// corpusTexts returns the corpus lines and multi-line texts, in that order.
func corpusTexts(t *testing.T) []string {
	t.Helper()
	var c struct{ Lines, Texts []string }
	readGz(t, tokenizerCorpus, &c)
	if len(c.Lines) < 2000 || len(c.Texts) < 5 {
		t.Fatalf("%s has %d lines and %d texts; want at least 2000 and 5", tokenizerCorpus, len(c.Lines), len(c.Texts))
	}
	return append(c.Lines, c.Texts...)
}

// smolTokenizer converts SmolLM2's GGUF tokenizer into a temporary directory and loads it.
func smolTokenizer(t *testing.T) (*tokenizer.Tokenizer, string) {
	t.Helper()
	in := filepath.Join(testenv.Root(t), smolGGUF)
	if _, err := os.Stat(in); err != nil {
		t.Fatalf("%v: run `just setup`", err)
	}
	dir := t.TempDir()
	if err := WriteTokenizer(in, dir); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tok, dir
}

// TestTokenizerMatchesHF: the converted tokenizer.json gives the same ids and decodings in Hugging
// Face tokenizers as in Hippo, and the chat template from the GGUF metadata renders as
// transformers' apply_chat_template (Jinja2) renders it.
func TestTokenizerMatchesHF(t *testing.T) {
	texts := corpusTexts(t)
	tok, dir := smolTokenizer(t)
	chats := [][]tokenizer.Message{
		{{Role: "user", Content: "Explain pipeline parallelism in one sentence."}},
		{{Role: "system", Content: "You are terse."}, {Role: "user", Content: "Hi there!"}},
		{{Role: "user", Content: "Hello"}, {Role: "assistant", Content: "Bonjour !"}, {Role: "user", Content: "ok 👍 <|im_end|>"}},
	}
	var refChats []map[string]any
	for i, c := range chats {
		var msgs []map[string]string
		for _, m := range c {
			msgs = append(msgs, map[string]string{"role": m.Role, "content": m.Content})
		}
		refChats = append(refChats, map[string]any{"messages": msgs, "add_generation_prompt": i != 2})
	}
	var resp struct {
		Jobs []struct {
			IDs     [][]int `json:"ids"`
			Decoded []string
			Chats   []string
		}
	}
	testenv.PythonJSON(t, "engines/tokenizer/testdata/reference.py",
		map[string]any{"jobs": []any{map[string]any{"dir": dir, "texts": texts, "chats": refChats}}}, &resp)
	if len(resp.Jobs) != 1 || len(resp.Jobs[0].IDs) != len(texts) || len(resp.Jobs[0].Chats) != len(chats) {
		t.Fatalf("reference answered %d jobs; want 1 with %d encodings and %d chats", len(resp.Jobs), len(texts), len(chats))
	}
	ref := resp.Jobs[0]
	bad := 0
	for i, text := range texts {
		got := tok.Encode(text, true)
		if !slices.Equal(got, ref.IDs[i]) {
			if bad++; bad <= 5 {
				t.Errorf("text %d %.80q:\n got %v\nwant %v (Hugging Face tokenizers)", i, text, got, ref.IDs[i])
			}
		}
		if d := tok.Decode(ref.IDs[i], false); d != ref.Decoded[i] {
			if bad++; bad <= 5 {
				t.Errorf("decode of text %d = %.80q; Hugging Face %.80q", i, d, ref.Decoded[i])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d differences from Hugging Face tokenizers over %d texts", bad, len(texts))
	}
	for i, c := range chats {
		t.Run(fmt.Sprintf("chat %d", i), func(t *testing.T) {
			got, err := tok.ApplyChatTemplate(c, i != 2)
			if err != nil {
				t.Fatal(err)
			}
			if got != ref.Chats[i] {
				t.Errorf("chat template:\n got %q\nwant %q (transformers)", got, ref.Chats[i])
			}
		})
	}
}
