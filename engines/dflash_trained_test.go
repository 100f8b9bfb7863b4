package engines

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// trainedDFlash is the DFlash drafter `just train-dflash` trained for SmolLM2-135M-Instruct,
// shipped as test data (engines/spec/testdata/dflash-smollm2).
const trainedDFlash = "spec/testdata/dflash-smollm2"

// TestTrainedDFlashMatchesStandalone is invariant 3 on the real model with the trained drafter:
// SmolLM2-135M-Instruct (the GGUF `just setup` installs, converted here) decodes a held-out chat
// prompt greedily, standalone and with the trained DFlash drafter at blocks 4, 8 and 16; the
// tokens must be identical. The drafter must also be useful: a trained draft accepts at least
// one token per step on average on this prompt (random weights accept none), so broken weights
// or a broken feature path fail here too.
func TestTrainedDFlashMatchesStandalone(t *testing.T) {
	const n = 24
	ctx := context.Background()
	target := smolLM2(t)
	b, err := os.ReadFile(filepath.Join(trainedDFlash, "heldout.json"))
	if err != nil {
		t.Fatal(err)
	}
	var prompts []string
	if err := json.Unmarshal(b, &prompts); err != nil || len(prompts) == 0 {
		t.Fatalf("heldout.json: %v (%d prompts)", err, len(prompts))
	}
	e, err := Open(ctx, Options{Model: target})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	d, err := NewDFlashDrafter(ctx, e, trainedDFlash)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ids, err := e.Prompt(prompts[0], true)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Tokens: ids, MaxTokens: n, IgnoreEOS: true}
	want, err := e.Generate(ctx, req, func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range []int{4, 8, 16} {
		t.Run(fmt.Sprintf("b%d", block), func(t *testing.T) {
			got, ss, err := e.GenerateSpec(ctx, req, d, block-1, func(Token) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got.Tokens) != fmt.Sprint(want.Tokens) {
				t.Fatalf("dflash tokens = %v; standalone %v", got.Tokens, want.Tokens)
			}
			perStep := float64(ss.Accepted) / float64(len(ss.Steps))
			t.Logf("block %d: %d steps, %.2f drafts accepted per step, by position %v", block, len(ss.Steps), perStep, ss.ByPosition)
			if perStep < 1 {
				t.Errorf("%.2f drafts accepted per step (%d of %d); a trained drafter accepts at least 1 on this prompt", perStep, ss.Accepted, ss.Drafted)
			}
		})
	}
}
