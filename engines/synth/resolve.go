package synth

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Prefix marks a model name that refers to a preset rather than a directory: "synth:tiny-qwen3".
const Prefix = "synth:"

// TokenizerFor names the tokenizer family (a folder under .cache/tokenizers) of an architecture.
func TokenizerFor(arch string) string {
	switch arch {
	case "llama":
		return "llama3"
	case "gemma3":
		return "gemma3"
	}
	return "qwen3"
}

// Resolve turns a model name into a checkpoint directory. A "synth:PRESET" name maps to
// modelsDir/PRESET, which is synthesized (seed 0, bf16, the preset's real tokenizer from
// tokenizersDir) the first time it is asked for. A real model's short name (RealModels, e.g.
// "smollm2-135m") or a path to a .gguf file is converted from GGUF into an MLX checkpoint under
// modelsDir the first time it is asked for (see package gguf). Anything else is returned
// unchanged.
func Resolve(ctx context.Context, name, modelsDir, tokenizersDir string) (string, error) {
	if _, ok := LookupReal(name); ok || IsGGUF(name) {
		return resolveGGUF(ctx, name, modelsDir, tokenizersDir)
	}
	preset, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return name, nil
	}
	p, err := Lookup(preset)
	if _, derr := LookupDFlash(preset); err != nil && derr == nil {
		return resolveDFlash(ctx, name, preset, modelsDir)
	}
	if err != nil {
		return "", err
	}
	dir := filepath.Join(modelsDir, preset)
	err = publish(ctx, dir, hasConfig, func(tmp string) error {
		_, err := Write(Options{Preset: preset, Out: tmp, Tokenizer: filepath.Join(tokenizersDir, TokenizerFor(p.Arch))})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("synthesize %s: %w", name, err)
	}
	return dir, nil
}

// hasConfig reports whether dir holds a checkpoint's config.json; publish renames a checkpoint
// into place only whole, so a config.json there means the whole checkpoint is.
func hasConfig(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "config.json"))
	return err == nil
}

// publish makes dir, unless ready(dir) says it is already there, by running write on an MLX
// worker into a private temporary directory beside it (dir + ".partial-*") and renaming that into
// place, so that dir is never seen half written, even after a crash. Resolvers of one name that
// run at once (tests in parallel, pipeline ranks on one host, two hippo commands) take turns
// under a lock file, dir + ".lock": the first writes, the others wait and find dir ready. A dir
// that is there but not ready (an older conversion, an interrupted copy) is the cache's own and
// is replaced. The temporary directory never outlives the call; the lock file stays.
func publish(ctx context.Context, dir string, ready func(string) bool, write func(tmp string) error) error {
	if ready(dir) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return err
	}
	defer unlock()
	if ready(dir) {
		return nil // another resolver wrote it while this one waited
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".partial-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it private to its owner
		return err
	}
	w := mlx.NewWorker()
	defer w.Close()
	if err := w.Do(ctx, func() error { return write(tmp) }); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// lockFile takes an exclusive advisory lock (flock) on path, creating the file, and waits while
// another holder has it, until ctx ends. The lock is released by the returned unlock, or by the
// kernel when the process dies, so a crashed resolver never blocks the next.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the last descriptor releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
