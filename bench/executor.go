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
	// Pipeline runs pipeline configurations; nil refuses them.
	Pipeline func(ctx context.Context, dir string, c Config) (Result, error)

	key string
	eng *engines.Engine
}

// Run executes one configuration.
func (x *Executor) Run(ctx context.Context, c Config) (Result, error) {
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
	case "pipeline":
		if x.Pipeline == nil {
			return Result{}, fmt.Errorf("mode pipeline is not available in this executor")
		}
		x.Close() // one model in memory at a time
		return x.Pipeline(ctx, dir, c)
	}
	return Result{}, fmt.Errorf("mode %q is not implemented yet: use standalone or pipeline", c.Mode)
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

// Close frees the loaded engine.
func (x *Executor) Close() error {
	if x.eng != nil {
		x.eng.Close()
		x.eng, x.key = nil, ""
	}
	return nil
}
