// Package testmodel writes the synthetic checkpoints Hippo's tests run on. It is a package of its
// own, not part of testenv, because package synth's own tests use testenv.
package testmodel

import (
	"context"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// Synthesize writes o into a temporary directory of t, with its preset's real tokenizer (from
// `just setup`; o.Out and o.Tokenizer are replaced), on an MLX worker of its own, and returns
// the directory. Any failure fails t.
func Synthesize(t testing.TB, o synth.Options) string {
	t.Helper()
	p, err := synth.Lookup(o.Preset)
	if err != nil {
		t.Fatal(err)
	}
	o.Out = t.TempDir()
	o.Tokenizer = testenv.Tokenizer(t, synth.TokenizerFor(p.Arch))
	w := mlx.NewWorker()
	defer w.Close()
	if err := w.Do(context.Background(), func() error { _, err := synth.Write(o); return err }); err != nil {
		t.Fatal(err)
	}
	return o.Out
}
