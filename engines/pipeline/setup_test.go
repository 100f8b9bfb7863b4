package pipeline_test

import (
	"context"
	"testing"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testmodel"
)

// testRequest is what the pipeline tests decode: 6 tokens after a 7-token prompt, past EOS.
var testRequest = engines.Request{Tokens: []int{1, 2, 3, 4, 5, 6, 7}, MaxTokens: 6, IgnoreEOS: true}

// testModel is a synthesized checkpoint with what a pipeline plan needs to know of it.
type testModel struct {
	dir string
	cfg *model.Config
	fp  string
}

// synthesize writes preset (seed 5, its real tokenizer) into a temporary directory of t.
func synthesize(t *testing.T, preset string) testModel {
	t.Helper()
	m := testModel{dir: testmodel.Synthesize(t, synth.Options{Preset: preset, Seed: 5})}
	var err error
	if m.cfg, err = model.ReadConfig(m.dir); err != nil {
		t.Fatal(err)
	}
	if m.fp, err = model.Fingerprint(m.dir); err != nil {
		t.Fatal(err)
	}
	return m
}

// plan is an f32 plan of m over split (in --split's form, such as "0:2,2:4").
func (m testModel) plan(t *testing.T, split string) pipeline.Plan {
	t.Helper()
	s, err := pipeline.ParseSplit(split, m.cfg.NumLayers)
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.Plan{Model: m.dir, DType: "f32", Split: s, Fingerprint: m.fp, Layers: m.cfg.NumLayers}
}

// standalone is what m decodes for testRequest in one process: what every pipeline must equal.
func (m testModel) standalone(t *testing.T) []int {
	t.Helper()
	e, err := engines.Open(context.Background(), engines.Options{Model: m.dir, DType: "f32"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	st, err := e.Generate(context.Background(), testRequest, func(engines.Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	return st.Tokens
}
