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
)

func main() {
	app := &cli.App{
		Name:  "hippo",
		Usage: "distributed LLM inference benchmarks on MLX",
		Commands: []*cli.Command{
			runCommand(),
			synthCommand(),
			benchCommand(),
		},
		// Usage errors print the message, not the whole help page.
		OnUsageError: func(c *cli.Context, err error, _ bool) error { return err },
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
