package bench

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// SpecGenerator decodes speculatively: the standalone engine or a pipeline driver.
type SpecGenerator interface {
	Tokenizer() *tokenizer.Tokenizer
	GenerateSpec(ctx context.Context, r engines.Request, d engines.Drafter, k int, emit func(engines.Token) error) (engines.Stats, engines.SpecStats, error)
}

var (
	_ SpecGenerator = (*engines.Engine)(nil)
	_ SpecGenerator = (*pipeline.Driver)(nil)
)

// Spec runs c with speculative decoding on target e with drafter d and measures it, adding the
// acceptance statistics and per-step draft and verify times. c.Mode names the result ("spec"
// when empty).
func Spec(ctx context.Context, e SpecGenerator, d engines.Drafter, c Config, onToken func(string)) (Result, error) {
	if c.Mode == "" || c.Mode == "standalone" {
		c.Mode = "spec"
	}
	res := Result{Mode: c.Mode, Model: filepath.Base(c.Model), Link: c.Link, Transport: c.Transport, Stages: c.Stages}
	prompt, err := engines.Prompt(e.Tokenizer(), c.Prompt, c.Chat)
	if err != nil {
		return res, err
	}
	k := c.DraftTokens
	if k == 0 {
		k = 4
		if b, ok := d.(interface{ BlockSize() int }); ok { // dflash: fill its trained block
			k = b.BlockSize() - 1
		}
	}
	out := newTextStream(e.Tokenizer(), onToken)
	st, ss, err := e.GenerateSpec(ctx, request(c, prompt), d, k, out.emit)
	fill(&res, st, out.finish())
	for i := range res.Steps {
		if i < len(ss.Steps) {
			s := ss.Steps[i]
			res.Steps[i].DraftMS = ms(s.Draft)
			res.Steps[i].Accepted = s.Accepted
			res.Steps[i].Tokens = s.Accepted + 1
			res.Steps[i].SampleMS = 0
		}
	}
	// A speculative step emits several tokens: decode tok/s counts tokens, not steps.
	if st.Decode > 0 {
		res.DecodeTokS = float64(len(st.Tokens)-1) / st.Decode.Seconds()
	}
	acc := &Acceptance{Drafted: ss.Drafted, Accepted: ss.Accepted, ByPosition: make([]float64, len(ss.ByPosition))}
	if ss.Drafted > 0 {
		acc.Rate = float64(ss.Accepted) / float64(ss.Drafted)
	}
	if len(ss.Steps) > 0 {
		acc.MeanAccepted = float64(ss.Accepted) / float64(len(ss.Steps))
	}
	for i := range ss.ByPosition {
		if ss.DraftedByPosition[i] > 0 {
			acc.ByPosition[i] = float64(ss.ByPosition[i]) / float64(ss.DraftedByPosition[i])
		}
	}
	res.Acceptance = acc
	if err != nil {
		return res, fmt.Errorf("%s run: %w", c.Mode, err)
	}
	return res, nil
}

// Closer frees what NewDrafter opened.
type Closer interface{ Close() }

// NewDrafter builds the drafter a configuration names. A model drafter opens its checkpoint
// (draftDir); a dflash drafter loads its draft checkpoint (draftDir) onto target, the engine it
// will draft for (nil in pipeline modes, which dflash does not support). The caller closes the
// returned Closer, if any, before target.
func NewDrafter(ctx context.Context, name, draftDir, dtype string, target *engines.Engine) (engines.Drafter, Closer, error) {
	switch name {
	case "lookup":
		return engines.LookupDrafter{}, nil, nil
	case "model":
		if draftDir == "" {
			return nil, nil, fmt.Errorf("drafter model needs a draft checkpoint: give --draft DIR (a smaller model with the same tokenizer)")
		}
		de, err := engines.Open(ctx, engines.Options{Model: draftDir, DType: dtype})
		if err != nil {
			return nil, nil, fmt.Errorf("draft model: %w", err)
		}
		return engines.NewModelDrafter(de), de, nil
	case "dflash":
		if draftDir == "" {
			return nil, nil, fmt.Errorf("drafter dflash needs a DFlash draft checkpoint: give --draft DIR (e.g. one written by `hippo synth --arch dflash`)")
		}
		if target == nil {
			return nil, nil, fmt.Errorf("drafter dflash drafts from the target's hidden states, which only the standalone spec mode records: use mode spec, or drafter model or lookup with pipelines")
		}
		d, err := engines.NewDFlashDrafter(ctx, target, draftDir)
		if err != nil {
			return nil, nil, err
		}
		return d, d, nil
	}
	return nil, nil, fmt.Errorf("unknown drafter %q: use model, lookup or dflash", name)
}
