package gguf

import (
	"slices"
	"testing"
)

// TestTokenizerMatchesLlamaCpp: the tokenizer converted from SmolLM2's GGUF metadata gives the
// ids llama.cpp gives (its native reference) on the whole tokenizer corpus.
func TestTokenizerMatchesLlamaCpp(t *testing.T) {
	texts := corpusTexts(t)
	var g struct {
		Reference string
		IDs       [][]int
	}
	readGz(t, goldenTokens, &g)
	if len(g.IDs) != len(texts) {
		t.Fatalf("%s has %d id lists for %d texts: regenerate both with just golden-gguf-tokens", goldenTokens, len(g.IDs), len(texts))
	}
	tok, _ := smolTokenizer(t)
	bad := 0
	for i, text := range texts {
		got := tok.Encode(text, true)
		if !slices.Equal(got, g.IDs[i]) {
			if bad++; bad <= 5 {
				t.Errorf("text %d %.80q:\n got %v\nwant %v (%s)", i, text, got, g.IDs[i], g.Reference)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d texts differ from llama.cpp", bad, len(texts))
	}
}
