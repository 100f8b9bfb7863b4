package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
)

// synthDFlash is `hippo synth --arch dflash`: a DFlash draft checkpoint (no tokenizer: a draft
// uses its target's), checked against --target when given.
func synthDFlash(c *cli.Context) error {
	p, err := synth.LookupDFlash(c.String("preset"))
	if err != nil {
		return err
	}
	o := synth.DFlashOptions{
		Options: synth.Options{
			Preset: p.Name, Seed: c.Uint64("seed"), Out: c.String("out"), Layers: c.Int("layers"),
			DType: c.String("dtype"), Bits: c.Int("bits"), GroupSize: c.Int("group-size"),
			Set: wholeValues(c, "set"),
		},
		Target: c.String("target"),
	}
	w := mlx.NewWorker()
	defer w.Close()
	return w.Do(c.Context, func() error {
		if _, err := synth.WriteDFlash(o); err != nil {
			return err
		}
		fmt.Printf("wrote %s (dflash draft, seed %d) to %s\n", p.Name, o.Seed, o.Out)
		return nil
	})
}
