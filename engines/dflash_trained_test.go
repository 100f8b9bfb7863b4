package engines

import (
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
// prompt greedily, standalone and with the trained DFlash drafter at blocks 4 and 8 (its
// trained block), drafting over its head vocabulary (draft_vocab.json, the 8,544 tokens of its
// training replies); the tokens must be identical. The shipped drafter keeps 0.55 drafts per
// block on held-out prompts (its metrics.json), so this checks exactness with real trained
// weights on a llama target, not usefulness.
func TestTrainedDFlashMatchesStandalone(t *testing.T) {
	const n = 16
	target := smolLM2(t)
	b, err := os.ReadFile(filepath.Join(trainedDFlash, "heldout.json"))
	if err != nil {
		t.Fatal(err)
	}
	var prompts []string
	if err := json.Unmarshal(b, &prompts); err != nil || len(prompts) == 0 {
		t.Fatalf("heldout.json: %v (%d prompts)", err, len(prompts))
	}
	e, d := openDFlash(t, target, trainedDFlash)
	_, req, want := standaloneGreedy(t, e, prompts[0], true, n)
	if got, full := d.HeadVocab(), e.Config().VocabSize; got >= full {
		t.Fatalf("the shipped drafter scores %d tokens; want its head vocabulary (draft_vocab.json), fewer than the target's %d", got, full)
	}
	for _, block := range []int{4, 8} {
		t.Run(fmt.Sprintf("b%d", block), func(t *testing.T) {
			_, ss := specMatches(t, e, req, d, block-1, want)
			if cap := block - 1; ss.Drafted > cap*len(ss.Steps) {
				t.Errorf("drafted %d in %d steps; want at most %d per step", ss.Drafted, len(ss.Steps), cap)
			}
			t.Logf("block %d: %d steps, %d of %d drafts accepted, by position %v", block, len(ss.Steps), ss.Accepted, ss.Drafted, ss.ByPosition)
		})
	}
}
