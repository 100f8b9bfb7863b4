package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
)

func synthCommand() *cli.Command {
	return &cli.Command{
		Name:      "synth",
		Usage:     "write a shape-faithful checkpoint with seeded random weights",
		UsageText: "hippo synth --preset NAME --out DIR [--arch qwen3|llama|gemma3] [--seed N] [--tokenizer DIR] [--layers N] [--dtype bf16|f16|f32] [--bits 4|8] [--set key=value ...]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "arch", Usage: "architecture (checked against the preset); dflash writes a DFlash draft: " + fmt.Sprint(synth.DFlashNames())},
			&cli.StringFlag{Name: "target", Usage: "with --arch dflash: the target checkpoint the draft must fit"},
			&cli.StringFlag{Name: "preset", Required: true, Usage: "shape to reproduce: " + fmt.Sprint(synth.Names())},
			&cli.Uint64Flag{Name: "seed", Usage: "random seed"},
			&cli.StringFlag{Name: "tokenizer", Usage: "directory with tokenizer.json to copy (default: the preset's real tokenizer from `just setup`)"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "output directory"},
			&cli.IntFlag{Name: "layers", Usage: "override the number of layers"},
			&cli.StringFlag{Name: "dtype", Value: "bf16", Usage: "storage dtype: bf16, f16 or f32"},
			&cli.IntFlag{Name: "bits", Usage: "quantize linear layers to 4 or 8 bits (MLX affine, as mlx-lm convert)"},
			&cli.IntFlag{Name: "group-size", Value: 64, Usage: "quantization group size"},
			wholeListFlag("set", "override a config.json field (key=value, value as JSON, e.g. target_layer_ids=[1,3]; repeat for several)"),
		},
		Action: func(c *cli.Context) error {
			if c.String("arch") == "dflash" {
				return synthDFlash(c)
			}
			p, err := synth.Lookup(c.String("preset"))
			if err != nil {
				return err
			}
			if a := c.String("arch"); a != "" && a != p.Arch {
				return fmt.Errorf("synth: --arch %s does not match preset %s (%s)", a, p.Name, p.Arch)
			}
			tok := c.String("tokenizer")
			if tok == "" {
				tok = filepath.Join(tokenizersDir(), synth.TokenizerFor(p.Arch))
			}
			o := synth.Options{
				Preset: p.Name, Seed: c.Uint64("seed"), Tokenizer: tok, Out: c.String("out"),
				Layers: c.Int("layers"), DType: c.String("dtype"), Bits: c.Int("bits"),
				GroupSize: c.Int("group-size"), Set: wholeValues(c, "set"),
			}
			w := mlx.NewWorker()
			defer w.Close()
			return w.Do(c.Context, func() error {
				if _, err := synth.Write(o); err != nil {
					return err
				}
				fmt.Printf("wrote %s (%s, seed %d) to %s\n", p.Name, p.Arch, o.Seed, o.Out)
				return nil
			})
		},
	}
}
