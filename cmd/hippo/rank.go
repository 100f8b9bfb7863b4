package main

import (
	"fmt"
	"log"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
)

func rankCommand() *cli.Command {
	return &cli.Command{
		Name:  "rank",
		Usage: "serve one pipeline stage (layers FROM:TO of a model) for a driver on another process or machine",
		UsageText: "hippo rank --model DIR --stage 1 --listen ADDR [--next ADDR] [--split 0:14,14:28] [--dtype f32|bf16] [--link NAME] [--secret-file FILE] [--context N] [--ram SIZE] [--report-memory SIZE] [--transport tcp|mlx-ring]\n\n" +
			"Without --split (tcp only), the rank loads nothing until a driver assigns its layers: the driver asks every rank\n" +
			"for its free memory and splits the model in proportion. Without --next, such a rank is the last stage.",
		Flags: append(pipelineSecretFlags(),
			&cli.StringFlag{Name: "model", Required: true, Usage: "checkpoint directory (this machine's copy), synth:PRESET, smollm2-135m or FILE.gguf"},
			&cli.StringFlag{Name: "split", Usage: "every stage's layer range, as the driver uses it (default: the driver assigns the layers, weighted by each rank's free memory; required with mlx-ring)"},
			&cli.StringFlag{Name: "report-memory", Usage: "memory this rank offers a driver that plans the split (e.g. 12GB; default: the machine's available memory)"},
			&cli.IntFlag{Name: "stage", Required: true, Usage: "which stage this rank serves (1 = the one after the driver)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:7001", Usage: "address to accept the previous stage on"},
			&cli.StringFlag{Name: "next", Usage: "address of the next stage (not on the last stage)"},
			&cli.StringFlag{Name: "dtype", Usage: "compute dtype, the same as the driver's"},
			&cli.StringFlag{Name: "link", Value: "loopback", Usage: "emulated link profile for what this rank sends"},
			&cli.IntFlag{Name: "context", Usage: "context cap: positions one request may fill in this stage's KV cache (default: the model's max_position_embeddings)"},
			&cli.StringFlag{Name: "ram", Usage: "RAM the memory guard plans for instead of the detected amount (e.g. 16GB)"},
			&cli.DurationFlag{Name: "next-timeout", Value: pipeline.DefaultNextTimeout, Usage: "how long a session waits for the next stage to answer before reporting it down"},
			&cli.DurationFlag{Name: "idle-timeout", Value: pipeline.DefaultIdleTimeout, Usage: "close a driver's session after this long without a frame"},
			&cli.StringFlag{Name: "transport", Value: "tcp", Usage: "tcp, mlx-ring: join MLX's ring as rank --stage (MLX_RANK and MLX_HOSTFILE set; --listen and --next unused; loopback only), or mlx-jaccl: MLX's RDMA over Thunderbolt 5 (macOS only; MLX_RANK, MLX_IBV_DEVICES, MLX_JACCL_COORDINATOR set; untested on hardware)"},
		),
		Action: func(c *cli.Context) error {
			secret, err := pipelineSecret(c)
			if err != nil {
				return err
			}
			var ram int64
			if s := c.String("ram"); s != "" {
				if ram, err = engines.ParseBytes(s); err != nil {
					return fmt.Errorf("--ram: %w", err)
				}
			}
			dir, err := resolveModel(c.Context, c.String("model"))
			if err != nil {
				return err
			}
			var report int64
			if s := c.String("report-memory"); s != "" {
				if report, err = engines.ParseBytes(s); err != nil || report <= 0 {
					return fmt.Errorf("--report-memory %q: give a positive size such as 12GB", s)
				}
			}
			plan, err := bench.PlanFor(dir, bench.Config{Split: c.String("split"), Link: c.String("link"), Dtype: c.String("dtype"), Transport: c.String("transport")})
			if err != nil {
				return err
			}
			plan.Secret = secret
			stage := c.Int("stage")
			if c.String("split") == "" {
				if pipeline.OverMLX(plan.Transport) {
					return fmt.Errorf("--transport %s: give --split (ranks of MLX's ring load their layers before the ring is joined)", plan.Transport)
				}
				plan.Split = nil // wait for the driver's assignment (PlanFor balanced a placeholder)
			}
			if pipeline.OverMLX(plan.Transport) {
				if plan.Transport == pipeline.TransportRing {
					if err := pipeline.CheckRingLoopback(os.Getenv("MLX_HOSTFILE")); err != nil {
						return err
					}
				}
				r := &pipeline.Rank{Plan: plan, Stage: stage, Log: log.New(os.Stderr, fmt.Sprintf("hippo rank %d: ", stage), log.LstdFlags)}
				return r.ServeRing(c.Context)
			}
			if plan.Split != nil && stage < len(plan.Split)-1 && c.String("next") == "" {
				return fmt.Errorf("stage %d is not the last of %d: give --next ADDR of stage %d", stage, len(plan.Split), stage+1)
			}
			if next := c.String("next"); next != "" {
				if err := pipeline.CheckExposure(next, plan.Secret); err != nil {
					return fmt.Errorf("--next: %w", err)
				}
			}
			r := &pipeline.Rank{Plan: plan, Stage: stage, Next: c.String("next"), Context: c.Int("context"), RAM: ram, FreeMemory: report,
				IdleTimeout: c.Duration("idle-timeout"), NextTimeout: c.Duration("next-timeout"), Log: log.New(os.Stderr, fmt.Sprintf("hippo rank %d: ", stage), log.LstdFlags)}
			ln, err := r.Listen(c.Context, c.String("listen"))
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			defer ln.Close()
			return r.Serve(c.Context, ln)
		},
	}
}
