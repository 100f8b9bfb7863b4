package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/engines/tokenizer"
	"github.com/hippo-bench/hippo/internal/testenv"
)

func presetTokenizer(t *testing.T, p synth.Preset) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(testenv.Tokenizer(t, synth.TokenizerFor(p.Arch)))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func presetVocab(t *testing.T, p synth.Preset) int {
	t.Helper()
	var v int
	if _, err := fmt.Sscan(fmt.Sprint(p.Config["vocab_size"]), &v); err != nil || v <= 0 {
		t.Fatalf("preset %s: vocab_size %v", p.Name, p.Config["vocab_size"])
	}
	return v
}

// TestDefaultPromptFitsEveryPreset: `hippo run --model synth:PRESET` without --prompt works for
// every preset, deep-narrow (4,096 of Qwen3's ids) included.
func TestDefaultPromptFitsEveryPreset(t *testing.T) {
	toks := map[string]*tokenizer.Tokenizer{} // by tokenizer name: loading one takes a second
	for _, name := range synth.Names() {
		t.Run(name, func(t *testing.T) {
			p, err := synth.Lookup(name)
			if err != nil {
				t.Fatal(err)
			}
			tok := toks[synth.TokenizerFor(p.Arch)]
			if tok == nil {
				tok = presetTokenizer(t, p)
				toks[synth.TokenizerFor(p.Arch)] = tok
			}
			if err := checkPrompt(tok, defaultPrompt, false, presetVocab(t, p)); err != nil {
				t.Errorf("checkPrompt(default prompt) = %v; want nil", err)
			}
		})
	}
}

func TestCheckPrompt(t *testing.T) {
	p, err := synth.Lookup("deep-narrow")
	if err != nil {
		t.Fatal(err)
	}
	tok, vocab := presetTokenizer(t, p), presetVocab(t, p)
	tests := []struct {
		name   string
		prompt string
		chat   bool
		want   []string // substrings of the error; none: no error
	}{
		{name: "default", prompt: defaultPrompt},
		{name: "rare words", prompt: "The quick brown fox", want: []string{`"The quick brown fox" has token id 13876`, "vocabulary of 4096 ids", "more common words"}},
		{name: "chat template", prompt: defaultPrompt, chat: true, want: []string{"drop --chat"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPrompt(tok, tt.prompt, tt.chat, vocab)
			if len(tt.want) == 0 {
				if err != nil {
					t.Errorf("checkPrompt(%q) = %v; want nil", tt.prompt, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkPrompt(%q, chat %v) = nil; want an error", tt.prompt, tt.chat)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("checkPrompt(%q) = %q; want it to contain %q", tt.prompt, err, w)
				}
			}
		})
	}
}
