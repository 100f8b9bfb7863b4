package engines

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
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
	whole := 0 // drafts proposed at block 8
	for _, block := range []int{4, 8} {
		t.Run(fmt.Sprintf("b%d", block), func(t *testing.T) {
			_, ss := specMatches(t, e, req, d, block-1, want)
			if block == 8 {
				whole = ss.Drafted
			}
			if cap := block - 1; ss.Drafted > cap*len(ss.Steps) {
				t.Errorf("drafted %d in %d steps; want at most %d per step", ss.Drafted, len(ss.Steps), cap)
			}
			t.Logf("block %d: %d steps, %d of %d drafts accepted, by position %v", block, len(ss.Steps), ss.Accepted, ss.Drafted, ss.ByPosition)
		})
	}
	// Drafts cut by the drafter's confidence: the same tokens, and fewer drafts than whole blocks.
	t.Run("b8-confidence", func(t *testing.T) {
		if err := d.SetConfidence(0.3); err != nil {
			t.Fatal(err)
		}
		defer d.SetConfidence(0)
		_, ss := specMatches(t, e, req, d, 7, want)
		// Steps near max tokens draft fewer anyway: compare with whole blocks over the same tokens.
		if whole == 0 || ss.Drafted >= whole {
			t.Errorf("drafted %d at confidence 0.3 against %d in whole blocks; want fewer", ss.Drafted, whole)
		}
		t.Logf("confidence 0.3: %d steps, %d of %d drafts accepted (whole blocks: %d drafted), by position %v", len(ss.Steps), ss.Accepted, ss.Drafted, whole, ss.ByPosition)
	})
}

func TestConfidentPrefix(t *testing.T) {
	ps := []float32{0.9, 0.5, 0.8, 0.1}
	for p, want := range map[float64]int{0: 4, 0.1: 3, 0.3: 3, 0.4: 2, 0.5: 1, 0.95: 0} {
		if got := confidentPrefix(ps, p); got != want {
			t.Errorf("confidentPrefix(%v, %g) = %d; want %d (joint 0.9, 0.45, 0.36, 0.036)", ps, p, got, want)
		}
	}
	if got := confidentPrefix(nil, 0.5); got != 0 {
		t.Errorf("no positions: %d", got)
	}
}

func TestSetConfidenceRejects(t *testing.T) {
	d := &DFlashDrafter{}
	for _, p := range []float64{-0.1, 1, 2, math.NaN()} {
		if err := d.SetConfidence(p); err == nil || !strings.Contains(err.Error(), "draft confidence") {
			t.Errorf("SetConfidence(%g): %v; want an error naming the draft confidence", p, err)
		}
	}
	if err := d.SetConfidence(0.25); err != nil || math.Float64frombits(d.confidence.Load()) != 0.25 {
		t.Errorf("SetConfidence(0.25): %v, confidence %g", err, math.Float64frombits(d.confidence.Load()))
	}
}
