package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/engines"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestPlanGolden prints hippo plan for the seed's setups (and a few more) and compares the text
// with testdata/plan/NAME.txt; run with -update after an intended change.
func TestPlanGolden(t *testing.T) {
	const gib = 1 << 30
	cases := []struct {
		name string
		args planArgs
	}{
		{"qwen3-4b-bf16-16gb", planArgs{Model: "qwen3-4b", Machines: 2, Context: 4096, RAM: 16 * gib}},
		{"qwen3-4b-draft-0.6b-16gb", planArgs{Model: "qwen3-4b", Draft: "qwen3-0.6b", Machines: 2, Context: 4096, RAM: 16 * gib}},
		{"gemma-3-12b-4bit-2x16gb", planArgs{Model: "gemma-3-12b", Bits: 4, GroupSize: 64, Machines: 2, Context: 4096, RAM: 16 * gib}},
		{"gemma-3-12b-bf16-2x16gb", planArgs{Model: "gemma-3-12b", GroupSize: 64, Machines: 2, Context: 4096, RAM: 16 * gib}},
		{"qwen3-8b-f32-3x16gb", planArgs{Model: "synth:qwen3-8b", DType: "f32", Machines: 3, Context: 8192, RAM: 16 * gib}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := runPlan(&out, tc.args); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "plan", tc.name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestPlanGolden -update to create it)", err)
			}
			if d := cmp.Diff(string(want), out.String()); d != "" {
				t.Errorf("hippo plan %s differs from %s (-want +got):\n%s", tc.name, path, d)
			}
		})
	}
}

// TestPlanVerdicts checks the decisions behind the tables: which setups fit and how the pipeline
// is split.
func TestPlanVerdicts(t *testing.T) {
	const gib = 1 << 30
	cases := []struct {
		name  string
		args  planArgs
		fits  map[string]bool
		split string
	}{
		{"qwen3-4b bf16 on 16 GiB", planArgs{Model: "qwen3-4b", Draft: "qwen3-0.6b", Machines: 2, Context: 4096, RAM: 16 * gib},
			map[string]bool{"standalone": true, "pipeline": true, "spec": true}, "0:18,18:36"},
		{"qwen3-4b f32 on 16 GiB", planArgs{Model: "qwen3-4b", DType: "f32", Machines: 2, Context: 4096, RAM: 16 * gib},
			map[string]bool{"standalone": false, "pipeline": true, "spec": false}, "0:18,18:36"},
		{"gemma-3-12b 4-bit on 2x16 GiB", planArgs{Model: "gemma-3-12b", Bits: 4, GroupSize: 64, Machines: 2, Context: 4096, RAM: 16 * gib},
			map[string]bool{"standalone": true, "pipeline": true, "spec": true}, "0:24,24:48"},
		{"gemma-3-12b bf16 on 2x16 GiB", planArgs{Model: "gemma-3-12b", GroupSize: 64, Machines: 2, Context: 4096, RAM: 16 * gib},
			map[string]bool{"standalone": false, "pipeline": false, "spec": false}, "0:24,24:48"},
		{"gemma-3-12b bf16 on 3x16 GiB", planArgs{Model: "gemma-3-12b", GroupSize: 64, Machines: 3, Context: 4096, RAM: 16 * gib},
			map[string]bool{"standalone": false, "pipeline": true, "spec": false}, "0:15,15:34,34:48"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.args
			a.JSON = true
			var out bytes.Buffer
			if err := runPlan(&out, a); err != nil {
				t.Fatal(err)
			}
			var rep struct{ Plans []engines.Plan }
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, p := range rep.Plans {
				got[p.Mode] = p.Fits
				if p.Mode == "pipeline" && p.Split != tc.split {
					t.Errorf("pipeline split = %s; want %s", p.Split, tc.split)
				}
				if !p.Fits && p.Advice == "" {
					t.Errorf("%s does not fit but gives no advice", p.Mode)
				}
			}
			if d := cmp.Diff(tc.fits, got); d != "" {
				t.Errorf("fits per mode (-want +got):\n%s", d)
			}
		})
	}
}
