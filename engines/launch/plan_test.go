package launch

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestPlanAutoSplit: ranks on other machines given no split get one planned from their memory;
// an explicit split, a split in the hosts file, local stages and MLX's ring keep theirs.
func TestPlanAutoSplit(t *testing.T) {
	p, err := synth.Lookup("tiny-qwen3")
	if err != nil {
		t.Fatal(err)
	}
	o := synth.Options{Preset: "tiny-qwen3", Seed: 3, Out: t.TempDir(), Tokenizer: testenv.Tokenizer(t, synth.TokenizerFor(p.Arch))}
	w := mlx.NewWorker()
	err = w.Do(context.Background(), func() error { _, err := synth.Write(o); return err })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	hosts := func(extra string) string {
		f := filepath.Join(t.TempDir(), "hosts.yaml")
		body := "stages:\n  - name: a\n  - name: b\n    addr: 127.0.0.1:1\n  - name: c\n    addr: 127.0.0.1:2\n" + extra
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		name   string
		c      Config
		auto   bool
		stages int
	}{
		{"hosts without a split", Config{Hosts: hosts("")}, true, 3},
		{"hosts and --split", Config{Hosts: hosts(""), Split: "0:1,1:2,2:4"}, false, 3},
		{"split in the hosts file", Config{Hosts: hosts("split: \"0:2,2:3,3:4\"\n")}, false, 3},
		{"local stages", Config{Stages: 3}, false, 3},
		{"hosts over mlx-ring", Config{Hosts: hosts(""), Transport: "mlx-ring"}, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Model = o.Out
			plan, err := Plan(c)
			if err != nil {
				t.Fatal(err)
			}
			if plan.AutoSplit != tc.auto || len(plan.Split) != tc.stages {
				t.Errorf("Plan: AutoSplit %v with %d stages; want %v with %d", plan.AutoSplit, len(plan.Split), tc.auto, tc.stages)
			}
		})
	}
}
