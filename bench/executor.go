package bench

import (
	"context"

	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/pipeline"
)

// Executor runs sweep configurations through a launch.Loader, which keeps the last model loaded
// so that repeats and neighbouring configurations on the same model never reload weights. Calls
// must not overlap.
type Executor struct {
	// Resolve maps a model name (a directory or synth:PRESET) to a checkpoint directory.
	Resolve func(ctx context.Context, name string) (string, error)
	// Exe is the hippo binary that serves local pipeline stages (default: this executable).
	Exe string
	// OpenAI runs configurations of mode "openai" against a server.
	OpenAI OpenAI

	loader launch.Loader
}

// Run executes one configuration.
func (x *Executor) Run(ctx context.Context, c Config) (Result, error) { return x.Stream(ctx, c, nil) }

// Stream is Run that passes the text of each token to onToken as soon as it is decoded (on the
// engine's thread: keep it short); onToken may be nil.
func (x *Executor) Stream(ctx context.Context, c Config, onToken func(text string)) (Result, error) {
	if c.Mode == "openai" { // the model is a name on a server, not a checkpoint to load
		return x.OpenAI.Run(ctx, c)
	}
	if x.Resolve != nil {
		var err error
		if c.Model, err = x.Resolve(ctx, c.Model); err != nil {
			return Result{}, err
		}
		if c.Draft != "" {
			if c.Draft, err = x.Resolve(ctx, c.Draft); err != nil {
				return Result{}, err
			}
		}
	}
	lc := c.Launch()
	lc.Exe = x.Exe
	g, err := x.loader.Load(ctx, lc)
	if err != nil {
		return Result{}, err
	}
	return Run(ctx, g, c, onToken)
}

// Run measures c on g, an opened configuration, naming the result by how g runs (its mode,
// stages, link and transport).
func Run(ctx context.Context, g launch.Generator, c Config, onToken func(text string)) (Result, error) {
	info := g.Info()
	c.Mode, c.Stages, c.Link, c.Transport = info.Mode, info.Stages, info.Link, info.Transport
	if info.Split != "" {
		c.Split = info.Split
	}
	return Measure(ctx, g, c, onToken)
}

// Local returns the pipeline stages running as child processes (nil when none), for tests.
func (x *Executor) Local() *pipeline.Local { return x.loader.Local() }

// Close frees the loaded engines and stops any pipeline.
func (x *Executor) Close() error { return x.loader.Close() }

// Launch is the launch configuration of c (its model and draft already resolved to directories).
func (c Config) Launch() launch.Config {
	return launch.Config{Mode: c.Mode, Model: c.Model, DType: c.Dtype, Drafter: c.Drafter, Draft: c.Draft,
		DraftTokens: c.DraftTokens, DraftConfidence: c.DraftConfidence, Stages: c.Stages, Split: c.Split, Link: c.Link, Transport: c.Transport,
		Reply: c.Reply, Hosts: c.Hosts}
}
