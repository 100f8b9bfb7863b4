package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

func planCommand() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "size a model's standalone, pipeline and speculative setups against the machines' RAM",
		UsageText: "hippo plan --model DIR|PRESET [--bits N] [--machines N] [--ram SIZE] [--context N] [--dtype bf16|f16|f32] [--draft DIR|PRESET] [--json]\n\n" +
			"   e.g. hippo plan --model gemma-3-12b --bits 4 --machines 2 --ram 16GiB",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "checkpoint directory or preset: " + strings.Join(realPresets(), ", ")},
			&cli.IntFlag{Name: "bits", Usage: "plan the model quantized to 4 or 8 bits (MLX affine, as mlx-lm convert)"},
			&cli.IntFlag{Name: "group-size", Value: 64, Usage: "quantization group size"},
			&cli.IntFlag{Name: "machines", Value: 2, Usage: "machines of the pipeline plan"},
			&cli.StringFlag{Name: "ram", Usage: "RAM of each machine, e.g. 16GiB (default: this machine's)"},
			&cli.IntFlag{Name: "context", Value: 4096, Usage: "prompt + generated tokens the KV cache must hold"},
			&cli.StringFlag{Name: "dtype", Usage: "compute dtype: bf16, f16 or f32 (default: the checkpoint's storage dtype, as on a Mac)"},
			&cli.StringFlag{Name: "draft", Usage: "draft model for the speculative plan (default: the smallest preset of the target's family)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of a table"},
		},
		Action: func(c *cli.Context) error {
			a := planArgs{
				Model: c.String("model"), Bits: c.Int("bits"), GroupSize: c.Int("group-size"),
				Machines: c.Int("machines"), Context: c.Int("context"), DType: c.String("dtype"),
				Draft: c.String("draft"), JSON: c.Bool("json"),
			}
			if s := c.String("ram"); s != "" {
				ram, err := engines.ParseBytes(s)
				if err != nil {
					return fmt.Errorf("plan: --ram: %w", err)
				}
				a.RAM = ram
			} else {
				ram, err := engines.SystemRAM()
				if err != nil {
					return fmt.Errorf("plan: cannot read this machine's RAM (%v): give --ram", err)
				}
				a.RAM = ram
			}
			return runPlan(c.App.Writer, a)
		},
	}
}

// planArgs are the flags of hippo plan.
type planArgs struct {
	Model, Draft, DType string
	Bits, GroupSize     int
	Machines, Context   int
	RAM                 int64
	JSON                bool
}

// planned is a model as hippo plan sizes it.
type planned struct {
	Name      string `json:"name"`
	Source    string `json:"source"`
	Arch      string `json:"model_type"`
	Layers    int    `json:"layers"`
	Sliding   int    `json:"sliding_window_layers,omitempty"`
	Storage   string `json:"storage_dtype"`
	DiskBytes int64  `json:"disk_bytes"`
	cfg       *model.Config
}

// planReport is hippo plan's JSON output.
type planReport struct {
	Model       planned        `json:"model"`
	Draft       *planned       `json:"draft,omitempty"`
	DType       string         `json:"dtype"`
	Bits        int            `json:"bits,omitempty"`
	Context     int            `json:"context"`
	RAM         int64          `json:"ram_bytes"`
	Usable      int64          `json:"usable_bytes"`
	Plans       []engines.Plan `json:"plans"`
	DraftReason string         `json:"draft_note,omitempty"`
}

func runPlan(w io.Writer, a planArgs) error {
	target, err := loadPlanned(a.Model, a.Bits, a.GroupSize)
	if err != nil {
		return err
	}
	dtName := a.DType
	if dtName == "" {
		dtName = target.Storage
	}
	dt, err := mlx.ParseDType(dtName)
	if err != nil {
		return fmt.Errorf("plan: --dtype: %w", err)
	}
	rep := planReport{Model: *target, DType: dt.String(), Context: a.Context, RAM: a.RAM,
		Usable: int64(float64(a.RAM) * engines.SafetyFactor)}
	if q := target.cfg.Quantization; q != nil {
		rep.Bits = q.Bits
	}
	draft, note, err := pickDraft(a, target)
	if err != nil {
		return err
	}
	rep.Draft, rep.DraftReason = draft, note
	o := engines.PlanOptions{Target: target.cfg, DType: dt, Context: a.Context, RAM: a.RAM, Stages: a.Machines}
	if draft != nil {
		o.Draft = draft.cfg
	}
	if rep.Plans, err = engines.PlanDeployments(o); err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	if a.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return printDeployments(w, rep)
}

// pickDraft resolves --draft, or the smallest preset of the target's family, quantized like the
// target.
func pickDraft(a planArgs, target *planned) (*planned, string, error) {
	bits := a.Bits
	if q := target.cfg.Quantization; q != nil {
		bits = q.Bits
	}
	name := a.Draft
	if name == "" {
		p, err := synth.Smallest(archOf(target.cfg.ModelType))
		if err != nil {
			return nil, "no preset of this family to draft with: give --draft", nil
		}
		if p.Name == target.Name {
			return nil, target.Name + " is already the smallest of its family: give --draft for a speculative plan", nil
		}
		name = p.Name
	}
	d, err := loadPlanned(name, bits, a.GroupSize)
	if err != nil {
		return nil, "", fmt.Errorf("plan: --draft: %w", err)
	}
	return d, "", nil
}

// archOf maps a config's model_type to a preset family.
func archOf(modelType string) string {
	if modelType == "gemma3_text" {
		return "gemma3"
	}
	return modelType
}

// loadPlanned reads a checkpoint directory's config, or a preset's (quantized to bits when set).
func loadPlanned(name string, bits, groupSize int) (*planned, error) {
	name = strings.TrimPrefix(name, synth.Prefix)
	if _, err := os.Stat(filepath.Join(name, "config.json")); err == nil {
		c, err := model.ReadConfig(name)
		if err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
		if bits != 0 {
			if c.Quantization != nil && c.Quantization.Bits != bits {
				return nil, fmt.Errorf("plan: %s is already %d-bit: drop --bits", name, c.Quantization.Bits)
			}
			c.Quantization = &model.Quantization{Bits: bits, GroupSize: groupSize}
		}
		disk, err := safetensorsBytes(name)
		if err != nil {
			return nil, fmt.Errorf("plan: %w", err)
		}
		return describePlanned(filepath.Base(filepath.Clean(name)), "checkpoint "+name, c, disk), nil
	}
	p, err := synth.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("plan: model %q is neither a checkpoint directory (no config.json there) nor a preset: %w", name, err)
	}
	o := synth.Options{Preset: name, Bits: bits, GroupSize: groupSize}
	b, err := synth.ConfigJSON(o)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	c, err := model.ParseConfig(b, "preset "+name)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	disk, err := synth.Size(o)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return describePlanned(name, p.Source, c, disk), nil
}

func describePlanned(name, source string, c *model.Config, disk int64) *planned {
	p := &planned{Name: name, Source: source, Arch: c.ModelType, Layers: c.NumLayers, Storage: checkpointDType(c), DiskBytes: disk, cfg: c}
	for i := 0; i < c.NumLayers; i++ {
		if c.LayerWindow(i) > 0 {
			p.Sliding++
		}
	}
	return p
}

// checkpointDType is the short name of a config's torch_dtype (newer configs call it dtype), bf16
// when it says nothing.
func checkpointDType(c *model.Config) string {
	s := c.TorchDtype
	if s == "" {
		s, _ = c.Raw["dtype"].(string)
	}
	switch s {
	case "float32":
		return "f32"
	case "float16":
		return "f16"
	}
	return "bf16"
}

// safetensorsBytes is the size of a checkpoint's safetensors files.
func safetensorsBytes(dir string) (int64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return 0, err
	}
	if len(files) == 0 {
		return 0, fmt.Errorf("%s has no .safetensors files", dir)
	}
	var n int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return 0, err
		}
		n += st.Size()
	}
	return n, nil
}

func realPresets() []string {
	var out []string
	for _, n := range synth.Names() {
		if p, err := synth.Lookup(n); err == nil && p.Real() {
			out = append(out, n)
		}
	}
	return out
}

func printDeployments(w io.Writer, r planReport) error {
	m := r.Model
	shape := fmt.Sprintf("%s, %d layers", m.Arch, m.Layers)
	if m.Sliding > 0 {
		shape = fmt.Sprintf("%s, %d layers (%d sliding-window, %d global)", m.Arch, m.Layers, m.Sliding, m.Layers-m.Sliding)
	}
	weights := m.Storage
	if q := m.cfg.Quantization; q != nil {
		weights = fmt.Sprintf("%d-bit (group %d, %s scales)", q.Bits, q.GroupSize, m.Storage)
	}
	fmt.Fprintf(w, "model    %s: %s, %s, %s on disk (%s)\n", m.Name, shape, weights, decimalGB(m.DiskBytes), m.Source)
	if r.Draft != nil {
		fmt.Fprintf(w, "draft    %s: %s, %d layers, %s on disk\n", r.Draft.Name, r.Draft.Arch, r.Draft.Layers, decimalGB(r.Draft.DiskBytes))
	} else if r.DraftReason != "" {
		fmt.Fprintf(w, "draft    none: %s\n", r.DraftReason)
	}
	fmt.Fprintf(w, "compute  %s, context %d tokens\n", r.DType, r.Context)
	fmt.Fprintf(w, "RAM      %s per machine, %s usable (x%.2f)\n\n", engines.FormatBytes(r.RAM), engines.FormatBytes(r.Usable), engines.SafetyFactor)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODE\tMACHINE\tRUNS\tWEIGHTS\tKV CACHE\tRUNTIME\tTOTAL\tMARGIN\tVERDICT")
	for _, p := range r.Plans {
		for i, mc := range p.Machines {
			mode, verdict := p.Mode, ""
			if i > 0 {
				mode = ""
			}
			if i == len(p.Machines)-1 {
				verdict = "fits"
				if !p.Fits {
					verdict = "does not fit"
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mode, i+1, mc.Role,
				engines.FormatBytes(mc.Weights), engines.FormatBytes(mc.KVCache), engines.FormatBytes(mc.Overhead),
				engines.FormatBytes(mc.Total()), signedBytes(mc.Margin()), verdict)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, p := range r.Plans {
		if p.Mode == "pipeline" {
			fmt.Fprintf(w, "pipeline split: --stages %d --split %s (balanced by bytes)\n", len(p.Machines), p.Split)
		}
	}
	for _, p := range r.Plans {
		if !p.Fits {
			fmt.Fprintf(w, "%s does not fit: %s\n", p.Mode, p.Advice)
		}
	}
	if len(r.Plans) == 0 {
		return errors.New("plan: nothing to plan")
	}
	return nil
}

// decimalGB prints a file size in decimal GB, as Hugging Face lists files.
func decimalGB(n int64) string { return fmt.Sprintf("%.2f GB", float64(n)/1e9) }

func signedBytes(n int64) string {
	if n < 0 {
		return "-" + engines.FormatBytes(-n)
	}
	return "+" + engines.FormatBytes(n)
}
