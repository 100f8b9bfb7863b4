package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/gguf"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a GGUF file into an mlx-community-style checkpoint directory that mlx-lm loads",
		UsageText: "hippo convert FILE.gguf|smollm2-135m --out DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "output directory (created); may also follow FILE"},
		},
		Action: func(c *cli.Context) error {
			in, out, err := convertArgs(c.Args().Slice(), c.String("out"))
			if err != nil {
				return err
			}
			if m, ok := synth.LookupReal(in); ok {
				in = synth.RealFile(m, tokenizersDir())
			}
			w := mlx.NewWorker()
			defer w.Close()
			return w.Do(c.Context, func() error {
				res, err := gguf.Convert(gguf.Options{In: in, Out: out})
				if err != nil {
					return err
				}
				q := "dense"
				if qc, ok := res.Config["quantization"].(map[string]any); ok {
					q = fmt.Sprintf("quantization %v", qc)
				}
				fmt.Printf("wrote %s: %d tensors, %s, %s\n", out, res.Tensors, engines.FormatBytes(res.Bytes), q)
				return nil
			})
		},
	}
}

// convertArgs picks the input and --out from the arguments, which may put --out after the file
// (the command-line library stops parsing flags at the first positional argument).
func convertArgs(args []string, out string) (in, dir string, err error) {
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--out" || a == "-out":
			if i+1 == len(args) {
				return "", "", fmt.Errorf("convert: --out needs a directory")
			}
			out = args[i+1]
			i++
		case strings.HasPrefix(a, "--out="):
			out = strings.TrimPrefix(a, "--out=")
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 1 {
		return "", "", fmt.Errorf("convert: name one GGUF file (or a real model's short name: smollm2-135m), got %d arguments", len(pos))
	}
	if out == "" {
		return "", "", fmt.Errorf("convert: --out DIR is required")
	}
	return pos[0], out, nil
}
