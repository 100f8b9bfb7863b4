package experiments

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/bench"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// golden compares got with testdata/<name>.golden, rewriting it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func TestLoadInvalidGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			s, err := Load(f)
			if err == nil {
				t.Fatalf("Load(%s) = %d configurations, nil; want an error", f, len(s.Configs()))
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Load(%s) error %T %v; want *ValidationError", f, err, err)
			}
			golden(t, filepath.Join("invalid", name), err.Error()+"\n")
		})
	}
}

func TestOverrideErrorsGolden(t *testing.T) {
	tests := []struct {
		name string
		set  []string
	}{
		{"no-equals", []string{"max_tokens"}},
		{"bad-type", []string{"max_tokens=abc", "repeats=0"}},
		{"unknown-key", []string{"max_token=16"}},
		{"whole-matrix", []string{"matrix={mode: spec}"}},
		{"bad-value", []string{"mode=[standalone, pipelin]", "link=wifi", "mode=standalone"}},
		{"bad-yaml", []string{"mode=[standalone"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load("quick.yaml", tt.set...)
			if err == nil {
				t.Fatalf("Load(quick.yaml, %q) = nil error; want one", tt.set)
			}
			golden(t, filepath.Join("overrides", tt.name), err.Error()+"\n")
		})
	}
}

func TestShippedSweeps(t *testing.T) {
	tests := []struct {
		file    string
		configs int
		runs    int
	}{
		{"quick.yaml", 2, 2 * (1 + 2)},
		// standalone x 2 lengths + pipeline x 3 links x 2 lengths; 2 prompts x 5 repeats + 1 warm-up.
		{"thunderbolt-vs-wifi.yaml", 8, 8 * (2*5 + 1)},
		// standalone + pipeline x 2 links + spec + pipeline+spec x 2 links.
		{"sd-vs-pipeline.yaml", 6, 6 * (2*5 + 1)},
		// standalone + spec x 2 drafters x 8 lengths.
		{"draft-length.yaml", 17, 17 * (2*3 + 1)},
		// standalone + spec x 3 drafters (dflash, lookup, model) x 3 lengths; 6 prompts x 2
		// repeats + 1 warm-up. A drafter added to it adds 3 configurations.
		{"spec-real.yaml", 10, 10 * (6*2 + 1)},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			s, err := Load(tt.file)
			if err != nil {
				t.Fatalf("Load(%s): %v", tt.file, err)
			}
			if s.Description == "" {
				t.Errorf("%s has no description", tt.file)
			}
			if got := len(s.Configs()); got != tt.configs {
				t.Errorf("%s: %d configurations; want %d", tt.file, got, tt.configs)
			}
			if got := len(s.Plan()); got != tt.runs {
				t.Errorf("%s: %d runs; want %d", tt.file, got, tt.runs)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		set  []string
		want []bench.Config
	}{
		{
			name: "irrelevant settings dropped and merged",
			yaml: `
prompts: [p]
matrix:
  model: m
  mode: [standalone, pipeline, spec]
  link: [thunderbolt, wifi]
  stages: 2
  drafter: lookup
`,
			// spec shares standalone's engine group, so it runs beside it.
			want: []bench.Config{
				{Model: "m", Mode: "standalone"},
				{Model: "m", Mode: "spec", Drafter: "lookup"},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "thunderbolt"},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "wifi"},
			},
		},
		{
			name: "exclude then include like GitHub Actions",
			yaml: `
prompts: [p]
matrix:
  model: m
  mode: [pipeline, pipeline+spec]
  link: [thunderbolt, wifi]
  stages: 2
exclude:
  - {mode: pipeline+spec, link: wifi}
include:
  - {link: wifi, transport: tcp}
  - {mode: pipeline+spec, drafter: lookup}
  - {mode: spec, drafter: model, draft: d, draft_tokens: 3}
`,
			want: []bench.Config{
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "thunderbolt"},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "wifi", Transport: "tcp"},
				{Model: "m", Mode: "pipeline+spec", Stages: 2, Link: "thunderbolt", Drafter: "lookup"},
				{Model: "m", Mode: "spec", Drafter: "model", Draft: "d", DraftTokens: 3},
			},
		},
		{
			name: "later include overwrites added values, never matrix values",
			yaml: `
prompts: [p]
matrix:
  model: m
  mode: pipeline
  link: [thunderbolt, wifi]
  stages: 2
include:
  - {mode: pipeline, transport: tcp}
  - {link: wifi, transport: ring}
`,
			want: []bench.Config{
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "thunderbolt", Transport: "tcp"},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "wifi", Transport: "ring"},
			},
		},
		{
			name: "models outermost even when added by include",
			yaml: `
prompts: [p]
matrix:
  max_tokens: [8, 16]
  model: [a, b]
include:
  - {model: a, max_tokens: 32}
defaults:
  temperature: 0.7
`,
			want: []bench.Config{
				{Model: "a", Mode: "standalone", MaxTokens: 8, Temperature: 0.7},
				{Model: "a", Mode: "standalone", MaxTokens: 16, Temperature: 0.7},
				{Model: "a", Mode: "standalone", MaxTokens: 32, Temperature: 0.7},
				{Model: "b", Mode: "standalone", MaxTokens: 8, Temperature: 0.7},
				{Model: "b", Mode: "standalone", MaxTokens: 16, Temperature: 0.7},
			},
		},
		{
			name: "no matrix: defaults alone",
			yaml: "prompts: [p]\ndefaults: {model: m, max_tokens: 4}\n",
			want: []bench.Config{{Model: "m", Mode: "standalone", MaxTokens: 4}},
		},
		{
			name: "no matrix: one configuration per include",
			yaml: "prompts: [p]\ndefaults: {model: m}\ninclude:\n  - {max_tokens: 4}\n  - {max_tokens: 8}\n",
			want: []bench.Config{{Model: "m", Mode: "standalone", MaxTokens: 4}, {Model: "m", Mode: "standalone", MaxTokens: 8}},
		},
		{
			name: "set forces a value after expansion and merges",
			yaml: `
prompts: [p]
matrix:
  model: m
  mode: [standalone, pipeline]
  stages: 2
  max_tokens: [32, 64]
exclude:
  - {mode: pipeline, max_tokens: 64}
`,
			set: []string{"max_tokens=16", "repeats=1"},
			want: []bench.Config{
				{Model: "m", Mode: "standalone", MaxTokens: 16},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "loopback", MaxTokens: 16},
			},
		},
		{
			name: "set list replaces a matrix dimension",
			yaml: "prompts: [p]\nmatrix:\n  model: m\n  mode: pipeline\n  stages: 2\n  link: [thunderbolt, wifi]\n",
			set:  []string{"link=[ethernet-10g, custom:lab]"},
			want: []bench.Config{
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "ethernet-10g"},
				{Model: "m", Mode: "pipeline", Stages: 2, Link: "custom:lab"},
			},
		},
		{
			name: "set mode narrows a sweep without no-effect errors",
			yaml: "prompts: [p]\nmatrix:\n  model: m\n  mode: [standalone, pipeline]\n  stages: 2\n  link: [thunderbolt, wifi]\n",
			set:  []string{"mode=standalone"},
			want: []bench.Config{{Model: "m", Mode: "standalone"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("test.yaml", []byte(tt.yaml), tt.set...)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, s.Configs()); diff != "" {
				t.Errorf("Configs() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOverridesTopLevel(t *testing.T) {
	s, err := Load("thunderbolt-vs-wifi.yaml", "max_tokens=16", "repeats=1", "warmup=0", "timeout=90s", "prompts=hello", "name=tb-short")
	if err != nil {
		t.Fatal(err)
	}
	if s.Repeats != 1 || s.Warmup != 0 || s.Timeout.Seconds() != 90 || s.Name != "tb-short" {
		t.Errorf("got repeats=%d warmup=%d timeout=%s name=%s; want 1, 0, 1m30s, tb-short", s.Repeats, s.Warmup, s.Timeout, s.Name)
	}
	if diff := cmp.Diff([]string{"hello"}, s.Prompts); diff != "" {
		t.Errorf("prompts (-want +got):\n%s", diff)
	}
	if got := len(s.Configs()); got != 4 {
		t.Errorf("%d configurations; want 4 (standalone + 3 links, lengths merged)", got)
	}
	for _, c := range s.Configs() {
		if c.MaxTokens != 16 {
			t.Errorf("MaxTokens = %d; want 16 in %+v", c.MaxTokens, c)
		}
	}
}

func TestPromptsFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "prompts.txt"), []byte("# comment\nfirst prompt\n\nsecond prompt\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "hosts.yaml"), []byte("- 127.0.0.1\n"), 0o644)
	path := filepath.Join(dir, "s.yaml")
	os.WriteFile(path, []byte("prompts_file: prompts.txt\nhosts: hosts.yaml\nmatrix: {model: m}\n"), 0o644)
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"first prompt", "second prompt"}, s.Prompts); diff != "" {
		t.Errorf("prompts (-want +got):\n%s", diff)
	}
	if s.Hosts != filepath.Join(dir, "hosts.yaml") {
		t.Errorf("Hosts = %q; want %q", s.Hosts, filepath.Join(dir, "hosts.yaml"))
	}
	if s.Name != "s" {
		t.Errorf("Name = %q; want the file name, s", s.Name)
	}
}

func TestFlattenRoundTrip(t *testing.T) {
	for _, f := range []string{"quick.yaml", "sd-vs-pipeline.yaml", "draft-length.yaml"} {
		t.Run(f, func(t *testing.T) {
			s, err := Load(f, "max_tokens=8")
			if err != nil {
				t.Fatal(err)
			}
			flat, err := s.Flatten()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), FlatFile)
			os.WriteFile(path, flat, 0o644)
			s2, err := Load(path)
			if err != nil {
				t.Fatalf("Load(flattened): %v\n%s", err, flat)
			}
			if diff := cmp.Diff(s.Plan(), s2.Plan()); diff != "" {
				t.Errorf("plan of flattened sweep differs (-orig +flat):\n%s", diff)
			}
			if s2.Name != s.Name || s2.Timeout != s.Timeout || s2.Description != s.Description {
				t.Errorf("flattened header = %q %s; want %q %s", s2.Name, s2.Timeout, s.Name, s.Timeout)
			}
		})
	}
}

func TestPlanOrder(t *testing.T) {
	s, err := Parse("t.yaml", []byte(`
repeats: 2
warmup: 1
prompts: [a, b]
matrix:
  model: m
  max_tokens: [1, 2]
  mode: [standalone, pipeline]
  stages: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		Mode   string
		Tokens int
		Prompt string
		Repeat int
		Warmup bool
		Group  int
	}
	var got []step
	for _, r := range s.Plan() {
		got = append(got, step{r.Config.Mode, r.Config.MaxTokens, r.Config.Prompt, r.Repeat, r.Warmup, r.Group})
	}
	want := []step{
		{"standalone", 1, "a", 0, true, 0}, {"standalone", 2, "a", 0, true, 0},
		{"standalone", 1, "a", 0, false, 0}, {"standalone", 2, "a", 0, false, 0}, {"standalone", 1, "b", 0, false, 0}, {"standalone", 2, "b", 0, false, 0},
		{"standalone", 1, "a", 1, false, 0}, {"standalone", 2, "a", 1, false, 0}, {"standalone", 1, "b", 1, false, 0}, {"standalone", 2, "b", 1, false, 0},
		{"pipeline", 1, "a", 0, true, 1}, {"pipeline", 2, "a", 0, true, 1},
		{"pipeline", 1, "a", 0, false, 1}, {"pipeline", 2, "a", 0, false, 1}, {"pipeline", 1, "b", 0, false, 1}, {"pipeline", 2, "b", 0, false, 1},
		{"pipeline", 1, "a", 1, false, 1}, {"pipeline", 2, "a", 1, false, 1}, {"pipeline", 1, "b", 1, false, 1}, {"pipeline", 2, "b", 1, false, 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Plan() order mismatch (-want +got):\n%s", diff)
	}
	ids := map[string]bool{}
	for _, r := range s.Plan() {
		if ids[r.ID] {
			t.Errorf("duplicate id %s", r.ID)
		}
		ids[r.ID] = true
	}
}

// TestPlanAlternatesSpec: standalone and spec runs of a model share one engine group, so every
// prompt runs standalone and then each drafter's configurations before the next prompt.
func TestPlanAlternatesSpec(t *testing.T) {
	s, err := Parse("t.yaml", []byte(`
warmup: 1
prompts: [a, b]
matrix:
  model: m
  mode: [standalone, spec]
  drafter: [lookup, model]
  draft_tokens: [2]
include:
  - {drafter: model, draft: d}
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range s.Plan() {
		kind := "run"
		if r.Warmup {
			kind = "warm-up"
		}
		got = append(got, fmt.Sprintf("%s %s %s %s group %d", kind, r.Config.Mode, r.Config.Drafter, r.Config.Prompt, r.Group))
	}
	want := []string{
		"warm-up standalone  a group 0", "warm-up spec lookup a group 0", "warm-up spec model a group 0",
		"run standalone  a group 0", "run spec lookup a group 0", "run spec model a group 0",
		"run standalone  b group 0", "run spec lookup b group 0", "run spec model b group 0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Plan() order mismatch (-want +got):\n%s", diff)
	}
}

func TestPending(t *testing.T) {
	s, err := Parse("t.yaml", []byte("repeats: 2\nwarmup: 1\nprompts: [a]\nmatrix: {model: m, max_tokens: [1, 2], mode: [standalone, pipeline], stages: 2}\n"))
	if err != nil {
		t.Fatal(err)
	}
	plan := s.Plan()
	done := map[string]bool{}
	// Group 0 (standalone) complete; group 1 has max_tokens=1 complete and max_tokens=2 half done.
	for _, r := range plan {
		if r.Warmup {
			continue
		}
		if r.Group == 0 || r.Config.MaxTokens == 1 || r.Repeat == 0 {
			done[r.ID] = true
		}
	}
	var got []string
	for _, r := range pending(plan, done) {
		kind := "run"
		if r.Warmup {
			kind = "warmup"
		}
		got = append(got, fmt.Sprintf("%s %s tokens=%d repeat=%d", kind, r.Config.Mode, r.Config.MaxTokens, r.Repeat))
	}
	want := []string{"warmup pipeline tokens=2 repeat=0", "run pipeline tokens=2 repeat=1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pending mismatch (-want +got):\n%s", diff)
	}
}

// FuzzParse checks invariant 6 for sweep files: any input gives a sweep or an error, never a panic.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	shipped, _ := filepath.Glob("*.yaml")
	for _, p := range append(files, shipped...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "max_tokens=16")
	}
	f.Add([]byte("a: &x [*x]"), "mode=[spec]")
	f.Fuzz(func(t *testing.T, data []byte, set string) {
		s, err := Parse("fuzz.yaml", data, set)
		if err == nil {
			_ = s.Plan()
			if _, err := s.Flatten(); err != nil {
				t.Errorf("Flatten of a valid sweep: %v", err)
			}
		}
	})
}
