package serve

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// runRecord is the part of a runs.jsonl line (results.Record) that best-config selection reads.
// It is decoded leniently: the sweep runner may add fields.
type runRecord struct {
	ID     string        `json:"id"`
	Config bench.Config  `json:"config"`
	Result *bench.Result `json:"result"`
	Error  string        `json:"error"`
	Warmup bool          `json:"warmup"`
}

// Candidate is one configuration of a sweep with its measured decode speed.
type Candidate struct {
	// Config is the configuration without its prompt (prompts are samples of one workload).
	Config bench.Config
	// Runs is how many successful measured runs the mean is over.
	Runs           int
	MeanDecodeTokS float64
}

// Rejected is a faster candidate that cannot be served, and why.
type Rejected struct {
	Candidate
	Reason string
}

// Choice is the outcome of ChooseBest.
type Choice struct {
	Best Candidate
	// Rejected lists the faster candidates passed over, fastest first.
	Rejected []Rejected
	// Candidates is how many configurations had at least one successful run.
	Candidates int
}

// Describe says what was chosen and why, for the log.
func (c Choice) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chose %s (%s): mean decode %.2f tok/s over %d runs, the fastest servable of %d configurations",
		c.Best.Config.Model, describeConfig(c.Best.Config), c.Best.MeanDecodeTokS, c.Best.Runs, c.Candidates)
	for _, r := range c.Rejected {
		fmt.Fprintf(&b, "; passed over %s (%s, %.2f tok/s): %s", r.Config.Model, describeConfig(r.Config), r.MeanDecodeTokS, r.Reason)
	}
	return b.String()
}

// describeConfig names how a configuration runs: mode, dtype, and the settings of its mode.
func describeConfig(c bench.Config) string {
	parts := []string{"mode " + orDefault(c.Mode, "standalone"), "dtype " + orDefault(c.Dtype, "default")}
	if c.Drafter != "" && strings.HasSuffix(c.Mode, "spec") {
		d := "drafter " + c.Drafter
		if c.Draft != "" {
			d += " " + c.Draft
		}
		parts = append(parts, d, fmt.Sprintf("K %d", c.DraftTokens))
		if c.DraftConfidence > 0 {
			parts = append(parts, fmt.Sprintf("draft confidence %g", c.DraftConfidence))
		}
	}
	if strings.HasPrefix(c.Mode, "pipeline") {
		if c.Split != "" {
			parts = append(parts, "split "+c.Split)
		} else if c.Stages > 0 {
			parts = append(parts, fmt.Sprintf("%d stages", c.Stages))
		}
		parts = append(parts, "link "+orDefault(c.Link, "loopback"))
		if c.Transport != "" {
			parts = append(parts, "transport "+c.Transport)
		}
		if c.Hosts != "" {
			parts = append(parts, "hosts "+c.Hosts)
		}
	}
	return strings.Join(parts, ", ")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ErrNoCandidate is returned by ChooseBest when no configuration can be served.
var ErrNoCandidate = errors.New("no servable configuration")

// ReadBest chooses from the runs.jsonl of a sweep's output directory dir (or the file itself).
func ReadBest(dir string, check func(bench.Config) error) (Choice, error) {
	path := dir
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		path = filepath.Join(dir, "runs.jsonl")
	}
	f, err := os.Open(path)
	if err != nil {
		return Choice{}, fmt.Errorf("--best: %w (give a sweep's output directory, results/<sweep>/<stamp>)", err)
	}
	defer f.Close()
	c, err := ChooseBest(f, check)
	if err != nil {
		return Choice{}, fmt.Errorf("--best %s: %w", path, err)
	}
	return c, nil
}

// ChooseBest reads runs.jsonl records and picks the configuration with the best mean decode tok/s
// over its successful measured (non-warm-up) runs among those check accepts (check may be nil).
// A run id recorded more than once (a retried run) counts by its last record. A torn last line,
// left by a sweep killed mid-write, is ignored; any other malformed line is an error.
func ChooseBest(r io.Reader, check func(bench.Config) error) (Choice, error) {
	latest := map[string]runRecord{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	var bad error
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		if bad != nil {
			return Choice{}, bad // a malformed line that was not the last
		}
		var rec runRecord
		if err := json.Unmarshal([]byte(text), &rec); err != nil {
			bad = fmt.Errorf("line %d is not a run record: %v", line, err)
			continue
		}
		id := rec.ID
		if id == "" {
			id = fmt.Sprintf("line-%d", line)
		}
		if _, ok := latest[id]; !ok {
			order = append(order, id)
		}
		latest[id] = rec
	}
	if err := sc.Err(); err != nil {
		return Choice{}, err
	}
	type group struct {
		c   Candidate
		sum float64
	}
	groups := map[string]*group{}
	var keys []string
	for _, id := range order {
		rec := latest[id]
		if rec.Warmup || rec.Error != "" || rec.Result == nil {
			continue
		}
		c := rec.Config
		c.Prompt = ""
		kb, _ := json.Marshal(c)
		k := string(kb)
		g := groups[k]
		if g == nil {
			g = &group{c: Candidate{Config: c}}
			groups[k] = g
			keys = append(keys, k)
		}
		g.c.Runs++
		g.sum += rec.Result.DecodeTokS
	}
	var cands []Candidate
	for _, k := range keys {
		g := groups[k]
		g.c.MeanDecodeTokS = g.sum / float64(g.c.Runs)
		cands = append(cands, g.c)
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].MeanDecodeTokS > cands[j].MeanDecodeTokS })
	choice := Choice{Candidates: len(cands)}
	for _, c := range cands {
		if check != nil {
			if err := check(c.Config); err != nil {
				choice.Rejected = append(choice.Rejected, Rejected{Candidate: c, Reason: err.Error()})
				continue
			}
		}
		choice.Best = c
		return choice, nil
	}
	if len(cands) == 0 {
		return choice, fmt.Errorf("%w: no successful measured run", ErrNoCandidate)
	}
	return choice, fmt.Errorf("%w: all %d configurations were rejected (%s)", ErrNoCandidate, len(cands), choice.Rejected[0].Reason)
}

// Servable accepts the configurations `hippo serve` can run on this machine: every mode
// launch.Check accepts (not "openai", which measured another server), with a model that passes
// engines.CheckMemory for context tokens with ram bytes (0 detects it), or in a speculative mode
// with a draft model, a target and draft that pass engines.CheckSpecMemory together. A
// pipeline whose stages run on other machines (a hosts file) is checked for its hosts file only.
func Servable(ram int64, context int) func(bench.Config) error {
	return func(c bench.Config) error {
		if c.Mode == "openai" {
			return errors.New("mode openai measured another server: there is nothing to load here")
		}
		if err := launch.Check(c.Launch()); err != nil {
			return err
		}
		if c.Hosts != "" {
			return nil
		}
		dt, err := mlx.ParseDType(orDefault(c.Dtype, engines.DefaultDType()))
		if err != nil {
			return err
		}
		cfg, err := modelConfig(c.Model)
		if err != nil {
			return err
		}
		if c.Draft == "" || c.Drafter == "lookup" || !launch.Speculative(c.Mode) {
			return engines.CheckMemory(cfg, dt, context, ram)
		}
		// The draft model runs in this process beside the target (spec), or beside stage 0 of
		// stages that all run here (pipeline+spec): both must fit at once.
		draft, err := modelConfig(c.Draft)
		if err != nil {
			return fmt.Errorf("draft %s: %w", c.Draft, err)
		}
		return engines.CheckSpecMemory(cfg, draft, dt, context, ram)
	}
}

// bench is m as a sweep configuration, for Servable.
func (m ModelConfig) bench() bench.Config {
	return bench.Config{Model: m.Model, Mode: m.Mode, Dtype: m.DType, Drafter: m.Drafter, Draft: m.Draft,
		DraftTokens: m.DraftTokens, DraftConfidence: m.DraftConfidence, Stages: m.Stages, Split: m.Split, Link: m.Link, Transport: m.Transport,
		Reply: m.Reply, Hosts: m.Hosts}
}

// FromSweep is the served model of a sweep configuration, with the memory guard planning for
// context tokens.
func FromSweep(c bench.Config, context int) ModelConfig {
	return ModelConfig{Model: c.Model, Mode: c.Mode, DType: c.Dtype, Context: context, Drafter: c.Drafter, Draft: c.Draft,
		DraftTokens: c.DraftTokens, DraftConfidence: c.DraftConfidence, Stages: c.Stages, Split: c.Split, Link: c.Link, Transport: c.Transport,
		Reply: c.Reply, Hosts: c.Hosts}
}

// modelConfig reads a checkpoint's config, or a synth preset's or GGUF model's without writing it.
func modelConfig(name string) (*model.Config, error) {
	if _, ok := synth.LookupReal(name); ok || synth.IsGGUF(name) {
		b, err := synth.GGUFConfig(name)
		if err != nil {
			return nil, err
		}
		return model.ParseConfig(b, name)
	}
	preset, ok := strings.CutPrefix(name, synth.Prefix)
	if !ok {
		return model.ReadConfig(name)
	}
	p, err := synth.Lookup(preset)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(p.Config)
	if err != nil {
		return nil, err
	}
	return model.ParseConfig(b, name)
}
