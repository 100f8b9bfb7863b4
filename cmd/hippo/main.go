// Command hippo benchmarks and serves LLM inference on MLX: standalone, pipelined across machines
// and speculative. Run `hippo help` for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/experiments"
	"github.com/hippo-bench/hippo/transport"
)

// resolveModel turns synth:PRESET, a real model's short name or a .gguf file into a checkpoint
// under models/, synthesizing or converting it once.
func resolveModel(ctx context.Context, name string) (string, error) {
	return synth.Resolve(ctx, name, modelsDir(), tokenizersDir())
}

// linkParams describes a link profile for run records.
func linkParams(link string) map[string]any {
	p, err := transport.ParseProfile(link)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return map[string]any{
		"name": p.Name, "latency_ms": float64(p.Latency.Microseconds()) / 1000,
		"jitter_ms": float64(p.Jitter.Microseconds()) / 1000, "bandwidth_bytes_s": p.Bandwidth, "source": p.Source,
	}
}

func main() {
	app := &cli.App{
		Name:  "hippo",
		Usage: "distributed LLM inference benchmarks on MLX",
		Commands: []*cli.Command{
			runCommand(),
			synthCommand(),
			convertCommand(),
			benchCommand(),
			rankCommand(),
			serveCommand(),
			modelsCommand(),
			planCommand(),
			sweepCommand(),
			plotCommand(),
			reportCommand(),
			compareCommand(),
		},
		// Usage errors print the message, not the whole help page.
		OnUsageError: func(c *cli.Context, err error, _ bool) error { return err },
	}
	sweepEngine = sweepHooks{
		NewExecutor: func(ctx context.Context, s *experiments.Sweep) (experiments.Executor, error) {
			return &bench.Executor{Resolve: resolveModel}, nil // pipelines launch ./bin/hippo rank children
		},
		MLXVersion: mlx.Version,
		LinkParams: linkParams,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, os.Args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.ExitCode() == 0 {
			return
		}
		fmt.Fprintln(os.Stderr, "hippo:", err)
		os.Exit(1)
	}
}
