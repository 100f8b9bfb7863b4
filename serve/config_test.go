package serve

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/bench"
)

func TestParseConfig(t *testing.T) {
	yaml := `
listen: 127.0.0.1:9000
api_keys: [k1, k2]
max_queue: 8
timeout: 90s
max_body: 2MiB
ram: 16GB
models:
  - model: synth:tiny-qwen3
    dtype: bf16
  - id: mine
    model: /models/Qwen3-4B/
    context: 8192
`
	got, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Listen: "127.0.0.1:9000", APIKeys: []string{"k1", "k2"}, MaxQueue: 8, Timeout: Duration(90 * time.Second),
		MaxBody: 2 << 20, RAM: 16e9, Models: []ModelConfig{
			{ID: "tiny-qwen3", Model: "synth:tiny-qwen3", DType: "bf16"},
			{ID: "mine", Model: "/models/Qwen3-4B/", Context: 8192},
		}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ParseConfig (-want +got):\n%s", d)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"empty", ``, "the file is empty"},
		{"unknown key", "models:\n  - model: a\nlisten_addr: x\n", "line 3: field listen_addr not found"},
		{"unknown model key", "models:\n  - modle: a\n", "line 2: field modle not found"},
		{"no models", "listen: x\n", "no models"},
		{"model missing", "models:\n  - dtype: f32\n", "models[0]: model is required"},
		{"bad dtype", "models:\n  - model: a\n    dtype: fp8\n", `unknown compute dtype "fp8"`},
		{"duplicate id", "models:\n  - model: a/x\n  - model: b/x\n", `id "x" is used twice`},
		{"bad duration", "timeout: soon\nmodels:\n  - model: a\n", `line 1: "soon" is not a duration`},
		{"bad size", "max_body: lots\nmodels:\n  - model: a\n", `line 1: "lots" is not a size`},
		{"wrong type", "max_queue: many\nmodels:\n  - model: a\n", "line 1: cannot unmarshal !!str `many` into int"},
		{"negative queue", "max_queue: -1\nmodels:\n  - model: a\n", "max_queue -1"},
		{"empty key", "api_keys: ['']\nmodels:\n  - model: a\n", "api_keys[0] is empty"},
		{"two documents", "models:\n  - model: a\n---\nmodels: []\n", "more than one YAML document"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseConfig error %v; want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "serve.") {
				t.Errorf("error %q shows Go type names", err)
			}
		})
	}
}

func TestReadConfigNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hippo.yaml")
	os.WriteFile(path, []byte("models: 3\n"), 0o644)
	if _, err := ReadConfig(path); err == nil || !strings.HasPrefix(err.Error(), path+": ") {
		t.Errorf("ReadConfig error %v; want it to start with the path", err)
	}
}

func TestChooseBest(t *testing.T) {
	rec := func(id, model, mode string, tokS float64, warmup bool, errText string) string {
		line := `{"id":"` + id + `","config":{"model":"` + model + `","mode":"` + mode + `","prompt":"p` + id + `","max_tokens":8},"warmup":` +
			map[bool]string{true: "true", false: "false"}[warmup]
		if errText != "" {
			return line + `,"error":"` + errText + `"}`
		}
		return line + `,"result":{"decode_tok_s":` + strconv.FormatFloat(tokS, 'f', -1, 64) + `},"env":{"host":"h"}}`
	}
	fits := func(c bench.Config) error {
		if c.Model == "huge" {
			return errors.New("model does not fit in memory")
		}
		if c.Mode == "pipeline" {
			return errors.New("mode pipeline is not served yet")
		}
		return nil
	}
	cases := []struct {
		name      string
		lines     []string
		model     string
		mean      float64
		runs      int
		rejected  []string
		errSubstr string
	}{
		{"mean over prompts", []string{rec("1", "a", "standalone", 10, false, ""), rec("2", "a", "standalone", 20, false, ""), rec("3", "b", "standalone", 14, false, "")}, "a", 15, 2, nil, ""},
		{"warm-ups and failures ignored", []string{rec("1", "a", "standalone", 100, true, ""), rec("2", "a", "standalone", 0, false, "boom"), rec("3", "b", "standalone", 5, false, "")}, "b", 5, 1, nil, ""},
		{"faster but does not fit", []string{rec("1", "huge", "standalone", 50, false, ""), rec("2", "b", "standalone", 5, false, "")}, "b", 5, 1, []string{"huge"}, ""},
		{"pipeline not served", []string{rec("1", "a", "pipeline", 50, false, ""), rec("2", "b", "", 5, false, "")}, "b", 5, 1, []string{"a"}, ""},
		{"retried run counts once", []string{rec("1", "a", "standalone", 0, false, "timeout"), rec("1", "a", "standalone", 9, false, ""), rec("2", "b", "standalone", 8, false, "")}, "a", 9, 1, nil, ""},
		{"torn last line", []string{rec("1", "a", "standalone", 3, false, ""), `{"id":"2","con`}, "a", 3, 1, nil, ""},
		{"malformed middle line", []string{`{"id":`, rec("1", "a", "standalone", 3, false, "")}, "", 0, 0, nil, "line 1 is not a run record"},
		{"nothing succeeded", []string{rec("1", "a", "standalone", 0, false, "boom")}, "", 0, 0, nil, "no successful measured run"},
		{"nothing fits", []string{rec("1", "huge", "standalone", 3, false, "")}, "", 0, 0, nil, "all 1 configurations were rejected (model does not fit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ChooseBest(strings.NewReader(strings.Join(tc.lines, "\n")+"\n"), fits)
			if tc.errSubstr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSubstr) {
					t.Fatalf("ChooseBest error %v; want %q", err, tc.errSubstr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Best.Config.Model != tc.model || c.Best.MeanDecodeTokS != tc.mean || c.Best.Runs != tc.runs || c.Best.Config.Prompt != "" {
				t.Errorf("best = %s at %v tok/s over %d runs (prompt %q); want %s at %v over %d, no prompt",
					c.Best.Config.Model, c.Best.MeanDecodeTokS, c.Best.Runs, c.Best.Config.Prompt, tc.model, tc.mean, tc.runs)
			}
			var rejected []string
			for _, r := range c.Rejected {
				rejected = append(rejected, r.Config.Model)
			}
			if d := cmp.Diff(tc.rejected, rejected); d != "" {
				t.Errorf("rejected (-want +got):\n%s", d)
			}
			if !strings.Contains(c.Describe(), "chose "+tc.model) {
				t.Errorf("Describe() = %q", c.Describe())
			}
		})
	}
}

// TestChooseBestAcrossModes: every mode a sweep measured competes; what cannot be served here is
// passed over with its reason.
func TestChooseBestAcrossModes(t *testing.T) {
	lines := []string{
		`{"id":"1","config":{"model":"tiny","mode":"openai"},"result":{"decode_tok_s":90}}`,
		`{"id":"2","config":{"model":"synth:tiny-qwen3","mode":"pipeline+spec","drafter":"dflash","draft":"d","transport":"mlx-ring"},"result":{"decode_tok_s":80}}`,
		`{"id":"3","config":{"model":"synth:tiny-qwen3","mode":"pipeline+spec","drafter":"lookup","stages":2,"draft_tokens":3},"result":{"decode_tok_s":70}}`,
		`{"id":"4","config":{"model":"synth:tiny-qwen3","mode":"spec","drafter":"lookup"},"result":{"decode_tok_s":60}}`,
		`{"id":"5","config":{"model":"synth:tiny-qwen3","mode":"standalone"},"result":{"decode_tok_s":50}}`,
	}
	c, err := ChooseBest(strings.NewReader(strings.Join(lines, "\n")), Servable(24<<30, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Best.Config; got.Mode != "pipeline+spec" || got.Drafter != "lookup" {
		t.Errorf("best = %+v; want the pipeline+spec run with the lookup drafter", got)
	}
	d := c.Describe()
	for _, want := range []string{"mode pipeline+spec", "drafter lookup", "K 3", "2 stages", "passed over tiny (mode openai", "another server", "tcp only"} {
		if !strings.Contains(d, want) {
			t.Errorf("Describe() = %q; want it to contain %q", d, want)
		}
	}
}

func TestServable(t *testing.T) {
	check := Servable(24<<30, 4096)
	cases := []struct {
		name string
		c    bench.Config
		want string
	}{
		{"tiny fits", bench.Config{Model: "synth:tiny-qwen3", Mode: "standalone"}, ""},
		{"8B in f32 does not fit 24 GiB", bench.Config{Model: "synth:qwen3-8b", Dtype: "f32"}, "does not fit"},
		{"spec with lookup", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec", Drafter: "lookup"}, ""},
		{"spec with a draft model", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec", Drafter: "model", Draft: "synth:tiny-qwen3"}, ""},
		{"spec with a draft model that does not fit", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec", Drafter: "model", Draft: "synth:qwen3-8b", Dtype: "f32"}, "does not fit"},
		{"8B in bf16 fits 24 GiB", bench.Config{Model: "synth:qwen3-8b", Dtype: "bf16"}, ""},
		{"4B in bf16 fits 24 GiB", bench.Config{Model: "synth:qwen3-4b", Dtype: "bf16"}, ""},
		{"spec 8B with a 4B draft: each fits alone, not both", bench.Config{Model: "synth:qwen3-8b", Mode: "spec", Drafter: "model", Draft: "synth:qwen3-4b", Dtype: "bf16"}, "target and draft together"},
		{"pipeline+spec 8B with a 4B draft, all stages here", bench.Config{Model: "synth:qwen3-8b", Mode: "pipeline+spec", Drafter: "model", Draft: "synth:qwen3-4b", Dtype: "bf16"}, "target and draft together"},
		{"spec 8B with a lookup drafter", bench.Config{Model: "synth:qwen3-8b", Mode: "spec", Drafter: "lookup", Dtype: "bf16"}, ""},
		{"spec with a draft that cannot be read", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec", Drafter: "model", Draft: "synth:nope"}, "draft synth:nope: synth: unknown preset"},
		{"spec without a drafter", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec"}, "unknown drafter"},
		{"spec model drafter without draft", bench.Config{Model: "synth:tiny-qwen3", Mode: "spec", Drafter: "model"}, "needs a draft checkpoint"},
		{"pipeline over wifi", bench.Config{Model: "synth:tiny-qwen3", Mode: "pipeline", Stages: 2, Link: "wifi"}, ""},
		{"pipeline with a bad link", bench.Config{Model: "synth:tiny-qwen3", Mode: "pipeline", Link: "pigeon"}, "pigeon"},
		{"pipeline+spec with dflash checks its draft", bench.Config{Model: "synth:tiny-qwen3", Mode: "pipeline+spec", Drafter: "dflash", Draft: "d"}, "read config"},
		{"pipeline+spec over the ring", bench.Config{Model: "synth:tiny-qwen3", Mode: "pipeline+spec", Drafter: "lookup", Transport: "mlx-ring"}, "tcp only"},
		{"pipeline with a missing hosts file", bench.Config{Model: "synth:tiny-qwen3", Mode: "pipeline", Hosts: filepath.Join(t.TempDir(), "hosts.yaml")}, "hosts"},
		{"openai", bench.Config{Model: "tiny", Mode: "openai"}, "another server"},
		{"unknown mode", bench.Config{Model: "synth:tiny-qwen3", Mode: "tensor"}, "use standalone"},
		{"unknown preset", bench.Config{Model: "synth:nope"}, "unknown preset"},
		{"missing directory", bench.Config{Model: filepath.Join(t.TempDir(), "none")}, "read config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := check(tc.c)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Servable(%+v) = %v; want %q", tc.c, err, tc.want)
			}
		})
	}
}
