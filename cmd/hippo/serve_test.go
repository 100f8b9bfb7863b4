package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/serve"
)

// TestServeModeFlags: hippo serve takes hippo run's mode flags, and --best serves the chosen
// configuration's mode with its settings.
func TestServeModeFlags(t *testing.T) {
	best := t.TempDir()
	runs := `{"id":"1","config":{"model":"synth:tiny-qwen3","mode":"openai"},"result":{"decode_tok_s":90}}
{"id":"2","config":{"model":"synth:tiny-qwen3","mode":"pipeline+spec","drafter":"lookup","draft_tokens":3,"stages":2,"link":"thunderbolt"},"result":{"decode_tok_s":70}}
{"id":"3","config":{"model":"synth:tiny-qwen3","mode":"standalone"},"result":{"decode_tok_s":50}}
`
	if err := os.WriteFile(filepath.Join(best, "runs.jsonl"), []byte(runs), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want serve.ModelConfig
	}{
		{"standalone", []string{"--model", "m"},
			serve.ModelConfig{ID: "m", Model: "m", Mode: "standalone", Context: serve.DefaultContext, Stages: 2, Link: "loopback", Transport: "tcp", Reply: "token"}},
		{"pipeline", []string{"--model", "m", "--mode", "pipeline", "--stages", "3", "--link", "wifi", "--hosts", "h.yaml"},
			serve.ModelConfig{ID: "m", Model: "m", Mode: "pipeline", Context: serve.DefaultContext, Stages: 3, Link: "wifi", Transport: "tcp", Reply: "token", Hosts: "h.yaml"}},
		{"spec", []string{"--model", "m", "--mode", "spec", "--drafter", "lookup", "--draft-tokens", "2"},
			serve.ModelConfig{ID: "m", Model: "m", Mode: "spec", Context: serve.DefaultContext, Drafter: "lookup", DraftTokens: 2, Stages: 2, Link: "loopback", Transport: "tcp", Reply: "token"}},
		{"best", []string{"--best", best},
			serve.ModelConfig{ID: "tiny-qwen3", Model: "synth:tiny-qwen3", Mode: "pipeline+spec", Context: serve.DefaultContext, Drafter: "lookup", DraftTokens: 3, Stages: 2, Link: "thunderbolt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got serve.Config
			cmd := serveCommand()
			cmd.Action = func(c *cli.Context) error {
				var err error
				got, err = serveConfig(c, slog.New(slog.DiscardHandler))
				return err
			}
			app := &cli.App{Name: "hippo", Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
			if err := app.Run(append([]string{"hippo", "serve"}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			if len(got.Models) != 1 {
				t.Fatalf("models = %+v; want one", got.Models)
			}
			if d := cmp.Diff(tc.want, got.Models[0]); d != "" {
				t.Errorf("served model (-want +got):\n%s", d)
			}
		})
	}
}
