package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines/synth"
)

// modelEntry is one checkpoint `hippo models` knows about.
type modelEntry struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	ModelType string `json:"model_type,omitempty"`
	Layers    int    `json:"layers,omitempty"`
	Hidden    int    `json:"hidden_size,omitempty"`
	Bytes     int64  `json:"bytes"`
	// From the "hippo" section a trained or synthesized checkpoint may carry.
	Role    string `json:"role,omitempty"`
	Trained bool   `json:"trained,omitempty"`
	Draft   string `json:"draft,omitempty"`
}

func modelsCommand() *cli.Command {
	return &cli.Command{
		Name:      "models",
		Usage:     "list local checkpoints (models/, the shipped trained pair) and the synth presets",
		UsageText: "hippo models [--json]",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			var dirs []string
			for _, pattern := range []string{
				filepath.Join(modelsDir(), "*", "config.json"),
				filepath.Join(modelsDir(), "*", "*", "config.json"),
				filepath.Join(home(), "engines", "spec", "testdata", "pair", "*", "config.json"),
			} {
				m, _ := filepath.Glob(pattern)
				dirs = append(dirs, m...)
			}
			sort.Strings(dirs)
			var out []modelEntry
			for _, cfgPath := range dirs {
				e, err := describe(filepath.Dir(cfgPath))
				if err != nil {
					return err
				}
				out = append(out, e)
			}
			real := realModels()
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"models": out, "real": real, "presets": synth.Names()})
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tLAYERS\tHIDDEN\tSIZE\tROLE\tPATH")
			for _, e := range out {
				role := e.Role
				if e.Trained {
					role += " (trained)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f MB\t%s\t%s\n", e.Name, e.ModelType, e.Layers, e.Hidden, float64(e.Bytes)/1e6, role, e.Path)
			}
			tw.Flush()
			fmt.Println("\nreal models (--model NAME; converted from GGUF into models/NAME on first use):")
			tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			for _, r := range real {
				state := "installed"
				if !r.Installed {
					state = "missing: run just setup"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", r.Name, state, r.File, r.About)
			}
			tw.Flush()
			fmt.Printf("\npresets for synth:PRESET: %v\n", synth.Names())
			return nil
		},
	}
}

func describe(dir string) (modelEntry, error) {
	e := modelEntry{Name: filepath.Base(dir), Path: dir}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return e, err
	}
	var cfg struct {
		ModelType string `json:"model_type"`
		Layers    int    `json:"num_hidden_layers"`
		Hidden    int    `json:"hidden_size"`
		Hippo     struct {
			Role    string `json:"role"`
			Trained bool   `json:"trained"`
			Draft   string `json:"draft"`
		} `json:"hippo"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return e, fmt.Errorf("%s: %w", dir, err)
	}
	e.ModelType, e.Layers, e.Hidden = cfg.ModelType, cfg.Layers, cfg.Hidden
	e.Role, e.Trained = cfg.Hippo.Role, cfg.Hippo.Trained
	if cfg.Hippo.Draft != "" {
		e.Draft = filepath.Clean(filepath.Join(dir, cfg.Hippo.Draft))
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			e.Bytes += fi.Size()
		}
	}
	return e, nil
}

// realEntry is a real model known by short name.
type realEntry struct {
	Name      string `json:"name"`
	File      string `json:"file"`
	Installed bool   `json:"installed"`
	About     string `json:"about"`
}

func realModels() []realEntry {
	var out []realEntry
	for _, m := range synth.RealModels {
		f := synth.RealFile(m, tokenizersDir())
		_, err := os.Stat(f)
		out = append(out, realEntry{Name: m.Name, File: f, Installed: err == nil, About: m.About})
	}
	return out
}
