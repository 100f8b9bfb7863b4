package main

import (
	"fmt"
	"log"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/transport"
)

func rankCommand() *cli.Command {
	return &cli.Command{
		Name:      "rank",
		Usage:     "serve one pipeline stage (layers FROM:TO of a model) for a driver on another process or machine",
		UsageText: "hippo rank --model DIR --split 0:14,14:28 --stage 1 --listen ADDR [--next ADDR] [--dtype f32|bf16] [--link NAME] [--secret S] [--transport tcp|mlx-ring]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "checkpoint directory (this machine's copy), or synth:PRESET"},
			&cli.StringFlag{Name: "split", Required: true, Usage: "every stage's layer range, as the driver uses it"},
			&cli.IntFlag{Name: "stage", Required: true, Usage: "which stage this rank serves (1 = the one after the driver)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:7001", Usage: "address to accept the previous stage on"},
			&cli.StringFlag{Name: "next", Usage: "address of the next stage (not on the last stage)"},
			&cli.StringFlag{Name: "dtype", Usage: "compute dtype, the same as the driver's"},
			&cli.StringFlag{Name: "link", Value: "loopback", Usage: "emulated link profile for what this rank sends"},
			&cli.StringFlag{Name: "secret", Usage: "shared secret (default $" + transport.SecretEnv + ")"},
			&cli.StringFlag{Name: "transport", Value: "tcp", Usage: "tcp, or mlx-ring: join MLX's ring as rank --stage (MLX_RANK and MLX_HOSTFILE set; --listen and --next unused)"},
		},
		Action: func(c *cli.Context) error {
			dir, err := resolveModel(c.Context, c.String("model"))
			if err != nil {
				return err
			}
			plan, err := bench.PlanFor(dir, bench.Config{Split: c.String("split"), Link: c.String("link"), Dtype: c.String("dtype"), Transport: c.String("transport")})
			if err != nil {
				return err
			}
			if s := c.String("secret"); s != "" {
				plan.Secret = s
			}
			stage := c.Int("stage")
			if plan.Transport == pipeline.TransportRing {
				r := &pipeline.Rank{Plan: plan, Stage: stage, Log: log.New(os.Stderr, fmt.Sprintf("hippo rank %d: ", stage), log.LstdFlags)}
				return r.ServeRing(c.Context)
			}
			if stage < len(plan.Split)-1 && c.String("next") == "" {
				return fmt.Errorf("stage %d is not the last of %d: give --next ADDR of stage %d", stage, len(plan.Split), stage+1)
			}
			ln, err := transport.Listen(c.Context, c.String("listen"), pipeline.ListenOptions(plan, stage))
			if err != nil {
				return err
			}
			defer ln.Close()
			r := &pipeline.Rank{Plan: plan, Stage: stage, Next: c.String("next"),
				Log: log.New(os.Stderr, fmt.Sprintf("hippo rank %d: ", stage), log.LstdFlags)}
			return r.Serve(c.Context, ln)
		},
	}
}
