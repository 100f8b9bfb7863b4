package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "side-by-side benchmarks against peer implementations",
		Subcommands: []*cli.Command{{
			Name:      "engine",
			Usage:     "Hippo vs mlx-lm decode tok/s, alternating on the same checkpoints",
			UsageText: "hippo bench engine [--model DIR|synth:PRESET|smollm2-135m|FILE.gguf ...] [--dtype f32 ...] [--rounds N] [--max-tokens N] [--stop-at-eos] [--native] [--layout auto|stored|transposed ...]",
			Flags: []cli.Flag{
				wholeListFlag("model", "checkpoints to compare (repeat the flag; a value is one path, commas included)", "synth:tiny-qwen3", "synth:qwen3-0.6b", "synth:deep-narrow"),
				&cli.StringSliceFlag{Name: "dtype", Value: cli.NewStringSlice("f32"), Usage: "compute dtypes, the same on both sides"},
				&cli.IntFlag{Name: "rounds", Value: 5, Usage: "measured rounds per row"},
				&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "tokens generated per round"},
				&cli.StringFlag{Name: "prompt", Value: "Write a short story about a lighthouse keeper who collects storms.", Usage: "prompt"},
				&cli.BoolFlag{Name: "stop-at-eos", Usage: "both sides stop at an end-of-sequence token (default: neither does, every round generates --max-tokens)"},
				&cli.BoolFlag{Name: "native", Usage: "add a row per model with each side in its out-of-the-box dtype (hippo's device default, mlx-lm's checkpoint dtype)"},
				&cli.StringSliceFlag{Name: "layout", Value: cli.NewStringSlice("auto"), Usage: "hippo's dense weight layouts, a row each: auto (transposed on the CPU backend, stored on a GPU), stored ([out, in] as in the checkpoint, as mlx-lm holds them) or transposed ([in, out])"},
			},
			Action: func(c *cli.Context) error {
				var dirs []string
				for _, m := range wholeValues(c, "model") {
					d, err := resolveModel(c.Context, m)
					if err != nil {
						return err
					}
					dirs = append(dirs, d)
				}
				_, err := bench.CompareEngines(c.Context, bench.CompareOptions{
					Models: dirs, DTypes: c.StringSlice("dtype"), Rounds: c.Int("rounds"),
					MaxTokens: c.Int("max-tokens"), Prompt: c.String("prompt"), Root: home(),
					Native: c.Bool("native"), StopAtEOS: c.Bool("stop-at-eos"), Layouts: c.StringSlice("layout"),
				}, os.Stdout)
				return err
			},
		}, {
			Name:      "serve",
			Usage:     "hippo serve vs mlx_lm.server on the same checkpoint, dtype and BLAS: aggregate tok/s, TTFT and inter-token latency at 1, 4 and 16 streams",
			UsageText: "hippo bench serve [--model DIR|synth:PRESET|smollm2-135m|FILE.gguf] [--concurrency 1 --concurrency 4 ...] [--rounds N] [--max-tokens N] [--max-batch N] [--client sdk|go]",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "model", Value: "synth:tiny-qwen3", Usage: "checkpoint"},
				&cli.IntSliceFlag{Name: "concurrency", Value: cli.NewIntSlice(1, 4, 16), Usage: "concurrent streams"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "measured rounds per row"},
				&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "tokens per stream"},
				&cli.StringFlag{Name: "prompt", Value: "Write a haiku about latency.", Usage: "prompt"},
				&cli.IntFlag{Name: "max-batch", Usage: "hippo serve --max-batch (default: its own)"},
				&cli.StringFlag{Name: "baseline", Usage: "another hippo binary (e.g. built from main) served alongside, to compare against"},
				&cli.StringFlag{Name: "client", Value: "sdk", Usage: "load client: sdk (the official OpenAI Python SDK in .venv) or go"},
			},
			Action: func(c *cli.Context) error {
				dir, exe, err := modelAndExe(c)
				if err != nil {
					return err
				}
				return bench.CompareServers(c.Context, bench.ServeCompareOptions{
					Model: dir, Exe: exe, Root: home(), Concurrency: c.IntSlice("concurrency"),
					Rounds: c.Int("rounds"), MaxTokens: c.Int("max-tokens"), Prompt: c.String("prompt"),
					MaxBatch: c.Int("max-batch"), Client: c.String("client"), Baseline: c.String("baseline"),
				}, os.Stdout)
			},
		}, {
			Name:      "spec",
			Usage:     "speculative vs standalone decoding for each drafter (model and lookup at K = 1..N, dflash at blocks B), measured speedup beside the analytic one",
			UsageText: "hippo bench spec --model DIR [--draft DIR] [--dflash DIR] [--drafter model --drafter lookup --drafter dflash] [--max-k 8] [--block 4 --block 8 --block 16] [--prompts FILE.json --chat] [--rounds N]",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "model", Required: true, Usage: "target checkpoint (e.g. the trained pair from `just train-pair`, or models/smollm2-135m-dense from `just train-dflash`)"},
				&cli.StringFlag{Name: "draft", Usage: "draft checkpoint for the model drafter"},
				&cli.StringFlag{Name: "dflash", Usage: "DFlash draft checkpoint for the dflash drafter (e.g. models/dflash-smollm2 from `just train-dflash`)"},
				&cli.StringSliceFlag{Name: "drafter", Value: cli.NewStringSlice("model", "lookup"), Usage: "drafters: model, lookup, dflash"},
				&cli.IntFlag{Name: "max-k", Value: 8, Usage: "largest draft length of the model and lookup drafters"},
				&cli.IntSliceFlag{Name: "block", Usage: "dflash: blocks B measured (B-1 drafts verified per step; default: those of 4, 8 and 16 within the draft's trained block)"},
				&cli.IntFlag{Name: "rounds", Value: 2, Usage: "measured rounds per row"},
				&cli.BoolFlag{Name: "warmup", Value: true, Usage: "one untimed standalone+spec run per drafter first"},
				&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "tokens per run (at most, with --chat)"},
				wholeListFlag("prompt", "prompts (repeat the flag; a value is one prompt, commas included)", "func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {\n", "// Package sort provides primitives for sorting slices", "for i := 0; i < len(b); i++ {\n"),
				&cli.StringFlag{Name: "prompts", Usage: "JSON file with a list of prompt strings (replaces --prompt; e.g. models/dflash-smollm2/heldout.json)"},
				&cli.IntFlag{Name: "num-prompts", Usage: "use only the first N prompts of --prompts (0: all)"},
				&cli.BoolFlag{Name: "chat", Usage: "wrap prompts in the target's chat template and stop at end of turn"},
				&cli.StringFlag{Name: "dtype", Usage: "compute dtype"},
				allowDivergenceFlag("standalone's"),
				&cli.Float64SliceFlag{Name: "draft-confidence", Usage: "dflash: cut each greedy draft where the drafter's joint probability of its drafts falls below this (0: the whole block); repeat for a table each"},
			},
			Action: func(c *cli.Context) error {
				o, err := specOptions(c)
				if err != nil {
					return err
				}
				return bench.CompareSpec(c.Context, o, os.Stdout)
			},
		}, {
			Name:  "pipeline",
			Usage: "standalone vs 2-stage pipeline per token, per link profile and transport (tcp, mlx-ring), measured network vs predicted; with --mode pipeline+spec, plain pipeline vs pipeline+spec on the same stages per link",
			UsageText: "hippo bench pipeline [--model DIR|synth:PRESET|smollm2-135m|FILE.gguf] [--link NAME ...] [--transport tcp --transport mlx-ring] [--rounds N] [--max-tokens N]\n" +
				"hippo bench pipeline --mode pipeline+spec --model DIR --drafter dflash --draft DIR [--draft-tokens K] [--stages N] [--link thunderbolt --link wifi] [--prompts FILE.json --chat]",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "model", Value: "synth:qwen3-demo", Usage: "checkpoint"},
				&cli.StringFlag{Name: "dtype", Usage: "compute dtype"},
				&cli.StringSliceFlag{Name: "link", Value: cli.NewStringSlice("loopback", "ethernet-10g", "thunderbolt", "ethernet-1g", "wifi"), Usage: "link profiles"},
				&cli.StringSliceFlag{Name: "transport", Value: cli.NewStringSlice("tcp", "mlx-ring"), Usage: "transports: tcp (the project's framing), mlx-ring (MLX's ring; loopback only)"},
				&cli.IntFlag{Name: "rounds", Value: 3, Usage: "measured rounds per link"},
				&cli.IntFlag{Name: "max-tokens", Value: 32, Usage: "tokens per round"},
				&cli.StringFlag{Name: "prompt", Value: "Describe the harbour at dawn.", Usage: "prompt"},
				&cli.StringFlag{Name: "mode", Value: "pipeline", Usage: "pipeline (against standalone) or pipeline+spec (against the plain pipeline)"},
				&cli.StringFlag{Name: "drafter", Value: "dflash", Usage: "pipeline+spec: dflash, model or lookup"},
				&cli.StringFlag{Name: "draft", Usage: "pipeline+spec: the drafter's checkpoint (e.g. engines/spec/testdata/dflash-smollm2, or a newer one from `just train-dflash`)"},
				&cli.IntFlag{Name: "draft-tokens", Usage: "pipeline+spec: K drafts per step (0: a dflash draft's block - 1, else 4)"},
				&cli.IntFlag{Name: "stages", Value: 2, Usage: "pipeline+spec: stages"},
				&cli.StringFlag{Name: "prompts", Usage: "pipeline+spec: JSON file with a list of prompt strings (replaces --prompt; e.g. models/dflash-smollm2/heldout.json)"},
				&cli.IntFlag{Name: "num-prompts", Usage: "pipeline+spec: use only the first N prompts of --prompts (0: all)"},
				&cli.BoolFlag{Name: "chat", Usage: "pipeline+spec: wrap prompts in the chat template and stop at end of turn"},
				allowDivergenceFlag("the plain pipeline's"),
				&cli.Float64Flag{Name: "draft-confidence", Usage: "pipeline+spec with --drafter dflash: cut each greedy draft where the drafter's joint probability of its drafts falls below this (0: whole drafts of K)"},
			},
			Action: func(c *cli.Context) error {
				dir, exe, err := modelAndExe(c)
				if err != nil {
					return err
				}
				switch c.String("mode") {
				case "pipeline":
				case "pipeline+spec":
					prompts := []string{c.String("prompt")}
					if f := c.String("prompts"); f != "" {
						b, err := os.ReadFile(f)
						if err != nil {
							return fmt.Errorf("bench pipeline: --prompts: %w", err)
						}
						prompts = nil
						if err := json.Unmarshal(b, &prompts); err != nil {
							return fmt.Errorf("bench pipeline: --prompts %s: want a JSON list of strings: %w", f, err)
						}
					}
					if n := c.Int("num-prompts"); n > 0 && n < len(prompts) {
						prompts = prompts[:n]
					}
					draft := c.String("draft")
					if draft != "" && c.String("drafter") == "model" {
						if draft, err = resolveModel(c.Context, draft); err != nil {
							return err
						}
					}
					return bench.ComparePipelineSpec(c.Context, bench.PipelineSpecOptions{
						Model: dir, DType: c.String("dtype"), Links: c.StringSlice("link"), Drafter: c.String("drafter"), Draft: draft,
						DraftTokens: c.Int("draft-tokens"), Stages: c.Int("stages"), Rounds: c.Int("rounds"), MaxTokens: c.Int("max-tokens"),
						Prompts: prompts, Chat: c.Bool("chat"), Exe: exe, AllowDivergence: c.Bool("allow-divergence"),
						DraftConfidence: c.Float64("draft-confidence"),
					}, os.Stdout)
				default:
					return fmt.Errorf("bench pipeline: --mode %q: use pipeline or pipeline+spec", c.String("mode"))
				}
				return bench.ComparePipeline(c.Context, bench.PipelineCompareOptions{
					Model: dir, DType: c.String("dtype"), Links: c.StringSlice("link"), Transports: c.StringSlice("transport"), Rounds: c.Int("rounds"),
					MaxTokens: c.Int("max-tokens"), Prompt: c.String("prompt"), Exe: exe,
				}, os.Stdout)
			},
		}},
	}
}

// modelAndExe resolves --model and finds this binary, which the benchmarks start as stages or
// servers.
func modelAndExe(c *cli.Context) (dir, exe string, err error) {
	if dir, err = resolveModel(c.Context, c.String("model")); err != nil {
		return "", "", err
	}
	exe, err = os.Executable()
	return dir, exe, err
}

// specOptions reads the flags of hippo bench spec.
func specOptions(c *cli.Context) (bench.SpecCompareOptions, error) {
	prompts := wholeValues(c, "prompt")
	if f := c.String("prompts"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return bench.SpecCompareOptions{}, fmt.Errorf("bench spec: --prompts: %w", err)
		}
		prompts = nil
		if err := json.Unmarshal(b, &prompts); err != nil {
			return bench.SpecCompareOptions{}, fmt.Errorf("bench spec: --prompts %s: want a JSON list of strings: %w", f, err)
		}
	}
	if n := c.Int("num-prompts"); n > 0 && n < len(prompts) {
		prompts = prompts[:n]
	}
	return bench.SpecCompareOptions{
		Target: c.String("model"), Draft: c.String("draft"), DFlash: c.String("dflash"), Drafters: c.StringSlice("drafter"),
		MaxK: c.Int("max-k"), Blocks: c.IntSlice("block"), Rounds: c.Int("rounds"), Warmup: c.Bool("warmup"),
		MaxTokens: c.Int("max-tokens"), Prompts: prompts, Chat: c.Bool("chat"), DType: c.String("dtype"),
		AllowDivergence: c.Bool("allow-divergence"), DraftConfidences: c.Float64Slice("draft-confidence"),
	}, nil
}

// allowDivergenceFlag lets a speculative benchmark measure runs whose greedy tokens part from the
// reference's (ref), as a GPU's bf16 kernels can make them, and count them instead of stopping.
func allowDivergenceFlag(ref string) cli.Flag {
	return &cli.BoolFlag{Name: "allow-divergence", Usage: "measure a speculative run whose greedy tokens part from " + ref +
		" (a GPU's verify and one-token kernels round differently; seen in bf16) and count it, instead of stopping with an error"}
}
