package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runSecret runs a throwaway command with the pipeline's secret flags and returns the secret
// it would use.
func runSecret(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var got string
	app := &cli.App{Name: "hippo", Flags: pipelineSecretFlags(), Action: func(c *cli.Context) error {
		s, err := pipelineSecret(c)
		got = s
		return err
	}}
	err := app.Run(append([]string{"hippo"}, args...))
	return got, err
}

func TestPipelineSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private := write("private", "  s3cret\n", 0o600)
	shared := write("shared", "s3cret\n", 0o644)
	empty := write("empty", "\n", 0o600)
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
		err  string
	}{
		{name: "none", want: ""},
		{name: "environment", env: "from-env", want: "from-env"},
		{name: "file wins over environment", env: "from-env", args: []string{"--secret-file", private}, want: "s3cret"},
		{name: "argv refused", args: []string{"--secret", "s3cret"}, err: "puts a secret on the command line"},
		{name: "file readable by others", args: []string{"--secret-file", shared}, err: "readable by other users"},
		{name: "empty file", args: []string{"--secret-file", empty}, err: "is empty"},
		{name: "missing file", args: []string{"--secret-file", filepath.Join(dir, "nope")}, err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HIPPO_SECRET", tc.env)
			got, err := runSecret(t, tc.args...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("secret from %v = %q, %v; want an error containing %q", tc.args, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("secret from %v = %q, %v; want %q", tc.args, got, err, tc.want)
			}
		})
	}
}

func TestServeAPIKeys(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte("k1\n\nk2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want []string
		err  string
	}{
		{name: "file", args: []string{"--api-key-file", keys}, want: []string{"k1", "k2"}},
		{name: "environment", env: "a, b", want: []string{"a", "b"}},
		{name: "argv refused", args: []string{"--api-key", "k1"}, err: "puts a secret on the command line"},
		{name: "open API on loopback", args: []string{"--listen", "127.0.0.1:8002"}},
		{name: "open API beyond loopback refused", args: []string{"--listen", "0.0.0.0:8002"}, err: "without an API key"},
		{name: "keyed API beyond loopback", env: "a", args: []string{"--listen", "0.0.0.0:8002"}, want: []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HIPPO_API_KEY", tc.env)
			var got []string
			cmd := serveCommand()
			app := &cli.App{Name: "hippo", Flags: cmd.Flags, Action: func(c *cli.Context) error {
				cfg, err := serveConfig(c, nil)
				got = cfg.APIKeys
				return err
			}}
			err := app.Run(append([]string{"hippo", "--model", "synth:tiny-qwen3"}, tc.args...))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("serve %v = %v; want an error containing %q", tc.args, err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("serve %v keys = %q, %v; want %q", tc.args, got, err, tc.want)
			}
		})
	}
}
