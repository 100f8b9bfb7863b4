package bench

import (
	"context"
	"strings"

	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/pipeline"
)

// Pipelines runs pipeline configurations on this machine, starting the other stages as child
// processes (`hippo rank`) and keeping them, and the driver, loaded across runs with the same
// model, dtype, split and link. It is an Executor whose configurations default to mode pipeline.
// Calls must not overlap.
type Pipelines struct {
	// Exe is the hippo binary that serves the other stages (default: this executable).
	Exe string

	x Executor
}

// PlanFor builds the plan of a pipeline configuration on checkpoint dir.
func PlanFor(dir string, c Config) (pipeline.Plan, error) {
	c.Model = dir
	return launch.Plan(c.Launch())
}

// Run executes one pipeline configuration (mode pipeline unless c says pipeline+spec) on
// checkpoint dir.
func (p *Pipelines) Run(ctx context.Context, dir string, c Config, onToken func(string)) (Result, error) {
	if !strings.HasPrefix(c.Mode, launch.Pipeline) {
		c.Mode = launch.Pipeline
	}
	c.Model = dir
	p.x.Exe = p.Exe
	return p.x.Stream(ctx, c, onToken)
}

// Close stops the driver, the stages and the drafter.
func (p *Pipelines) Close() error { return p.x.Close() }

// Local returns the running child stages (nil before the first run), for tests.
func (p *Pipelines) Local() *pipeline.Local { return p.x.Local() }
