package bench

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
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
	res := Result{Mode: c.Mode, Model: filepath.Base(c.Model), Link: c.Link, Transport: c.Transport, Stages: c.Stages, StepTiming: "lockstep"}
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
	st.Spec = &ss
	fill(&res, st, out.finish())
	if err != nil {
		return res, fmt.Errorf("%s run: %w", c.Mode, err)
	}
	return res, nil
}

// Closer frees what NewDrafter opened.
type Closer interface{ Close() }

// NewDrafter is launch.NewDrafter with its close function as a Closer (nil when there is nothing
// to free).
func NewDrafter(ctx context.Context, name, draftDir, dtype string, target *engines.Engine) (engines.Drafter, Closer, error) {
	d, closeFn, err := launch.NewDrafter(ctx, name, draftDir, dtype, target)
	if closeFn == nil {
		return d, nil, err
	}
	return d, closer(closeFn), err
}

type closer func()

func (c closer) Close() { c() }
