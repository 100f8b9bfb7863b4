package synth

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/internal/testenv"
)

// resolveChildEnv, when set in a re-run of this test binary, names the models directory the
// child resolves into; resolveStart is the file whose appearance starts every resolver at once.
const (
	resolveChildEnv = "HIPPO_TEST_RESOLVE_MODELS"
	resolveStart    = "start"
)

// TestResolveConcurrently: resolvers of the same presets racing in two other processes (two hippo
// commands, pipeline ranks on one host) and in two goroutines of this one all get the whole
// checkpoint, byte for byte the one a lone resolver writes, and leave no temporary directory.
func TestResolveConcurrently(t *testing.T) {
	names := []string{Prefix + "tiny-qwen3", Prefix + "dflash-tiny"}
	tokDir := filepath.Dir(testenv.Tokenizer(t, "qwen3"))
	resolveAll := func(models string) error {
		for _, name := range names {
			if _, err := Resolve(context.Background(), name, models, tokDir); err != nil {
				return err
			}
		}
		return nil
	}
	if models := os.Getenv(resolveChildEnv); models != "" {
		if err := awaitFile(filepath.Join(models, resolveStart), time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := resolveAll(models); err != nil {
			t.Fatal(err)
		}
		return
	}

	alone := t.TempDir()
	if err := resolveAll(alone); err != nil {
		t.Fatal(err)
	}
	models := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	var children []*exec.Cmd
	var outs []*bytes.Buffer
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestResolveConcurrently$", "-test.count=1")
		cmd.Env = append(os.Environ(), resolveChildEnv+"="+models)
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children, outs = append(children, cmd), append(outs, out)
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := awaitFile(filepath.Join(models, resolveStart), time.Minute); err != nil {
				errs <- err
				return
			}
			errs <- resolveAll(models)
		}()
	}
	// The children need a moment to start; then every resolver is released together.
	time.Sleep(500 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(models, resolveStart), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("resolver in this process: %v", err)
		}
	}
	for i, cmd := range children {
		if err := cmd.Wait(); err != nil {
			t.Errorf("resolver process %d: %v\n%s", i+1, err, outs[i])
		}
	}

	entries, err := os.ReadDir(models)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".partial") {
			t.Errorf("%s left behind in the models directory", e.Name())
		}
	}
	for _, name := range names {
		preset := strings.TrimPrefix(name, Prefix)
		if diff := diffDirs(filepath.Join(alone, preset), filepath.Join(models, preset)); diff != "" {
			t.Errorf("%s resolved concurrently differs from one resolved alone: %s", name, diff)
		}
	}
}

// awaitFile waits until path exists, or fails after d.
func awaitFile(path string, d time.Duration) error {
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, d)
		}
	}
}

// diffDirs describes the first difference between the regular files of two flat directories, or
// returns "" when they hold the same names with the same bytes.
func diffDirs(want, got string) string {
	read := func(dir string) (map[string][]byte, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		files := map[string][]byte{}
		for _, e := range entries {
			if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
				files[e.Name()] = b
			}
		}
		return files, nil
	}
	w, err := read(want)
	if err != nil {
		return err.Error()
	}
	g, err := read(got)
	if err != nil {
		return err.Error()
	}
	for name, b := range w {
		if gb, ok := g[name]; !ok {
			return name + " is missing"
		} else if !bytes.Equal(gb, b) {
			return name + " has other bytes"
		}
	}
	if len(g) != len(w) {
		return fmt.Sprintf("%d files; want %d", len(g), len(w))
	}
	return ""
}
