package bench

import (
	"context"
	"fmt"

	"github.com/hippo-bench/hippo/engines"
)

// Executor runs sweep configurations, keeping the last engine loaded so that repeats and
// neighbouring configurations on the same model never reload weights. Calls must not overlap.
type Executor struct {
	// Resolve maps a model name (a directory or synth:PRESET) to a checkpoint directory.
	Resolve func(ctx context.Context, name string) (string, error)
	// Pipelines runs pipeline configurations (the zero value launches local stages).
	Pipelines Pipelines
	// OpenAI runs configurations of mode "openai" against a server.
	OpenAI OpenAI

	key string
	eng *engines.Engine

	draftKey string
	draft    engines.Drafter
	draftEng Closer
}

// Run executes one configuration.
func (x *Executor) Run(ctx context.Context, c Config) (Result, error) {
	if c.Mode == "openai" { // the model is a name on the server, not a checkpoint
		return x.OpenAI.Run(ctx, c)
	}
	dir := c.Model
	if x.Resolve != nil {
		var err error
		if dir, err = x.Resolve(ctx, c.Model); err != nil {
			return Result{}, err
		}
	}
	switch c.Mode {
	case "", "standalone":
		e, err := x.engine(ctx, dir, c.Dtype)
		if err != nil {
			return Result{}, err
		}
		local := c
		local.Model = dir
		return Standalone(ctx, e, local, nil)
	case "spec":
		e, err := x.engine(ctx, dir, c.Dtype)
		if err != nil {
			return Result{}, err
		}
		draftDir := c.Draft
		if draftDir != "" && x.Resolve != nil {
			if draftDir, err = x.Resolve(ctx, c.Draft); err != nil {
				return Result{}, err
			}
		}
		key := c.Drafter + "\x00" + draftDir + "\x00" + c.Dtype
		if x.draft == nil || x.draftKey != key {
			x.closeDraft()
			if x.draft, x.draftEng, err = NewDrafter(ctx, c.Drafter, draftDir, c.Dtype, e); err != nil {
				return Result{}, err
			}
			x.draftKey = key
		}
		local := c
		local.Model = dir
		return Spec(ctx, e, x.draft, local, nil)
	case "pipeline", "pipeline+spec":
		x.closeEngine() // one copy of the model in memory at a time
		if c.Draft != "" && x.Resolve != nil {
			var err error
			if c.Draft, err = x.Resolve(ctx, c.Draft); err != nil {
				return Result{}, err
			}
		}
		return x.Pipelines.Run(ctx, dir, c, nil)
	}
	return Result{}, fmt.Errorf("mode %q is not implemented yet: use standalone, pipeline, spec, pipeline+spec or openai", c.Mode)
}

func (x *Executor) engine(ctx context.Context, dir, dtype string) (*engines.Engine, error) {
	key := dir + "\x00" + dtype
	if x.eng != nil && x.key == key {
		return x.eng, nil
	}
	x.Close()
	e, err := engines.Open(ctx, engines.Options{Model: dir, DType: dtype})
	if err != nil {
		return nil, err
	}
	x.eng, x.key = e, key
	return e, nil
}

func (x *Executor) closeDraft() {
	if x.draftEng != nil {
		x.draftEng.Close()
	}
	x.draft, x.draftEng, x.draftKey = nil, nil, ""
}

func (x *Executor) closeEngine() {
	if _, ok := x.draft.(engines.FeatureDrafter); ok {
		x.closeDraft() // a dflash drafter lives on the engine's thread and dies with it
	}
	if x.eng != nil {
		x.eng.Close()
		x.eng, x.key = nil, ""
	}
}

// Close frees the loaded engines and stops any pipeline.
func (x *Executor) Close() error {
	x.closeDraft()
	x.closeEngine()
	return x.Pipelines.Close()
}
