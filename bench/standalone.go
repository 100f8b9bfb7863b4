package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// ms converts a duration to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Generator is what Measure drives: a launch.Generator, or an engine or pipeline driver opened
// directly. In speculative modes it returns engines.Stats.Spec.
type Generator interface {
	Tokenizer() *tokenizer.Tokenizer
	Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error)
}

var (
	_ Generator = (*engines.Engine)(nil)
	_ Generator = (*pipeline.Driver)(nil)
	_ Generator = launch.Generator(nil)
)

// Standalone runs c on an open engine and measures it. onToken, if not nil, is called with the
// text of each token as soon as it is decoded (on the engine's thread: keep it short).
func Standalone(ctx context.Context, e *engines.Engine, c Config, onToken func(text string)) (Result, error) {
	c.Mode = "standalone"
	return Measure(ctx, e, c, onToken)
}

// Measure runs c on g and measures it; c.Mode names the result.
func Measure(ctx context.Context, e Generator, c Config, onToken func(text string)) (Result, error) {
	res := Result{Mode: c.Mode, Model: filepath.Base(c.Model), Link: c.Link, Transport: c.Transport, Stages: c.Stages, Split: c.Split, StepTiming: "lockstep"}
	if c.Stages == 0 { // not a pipeline
		res.Link, res.Transport, res.Stages, res.Split = "", "", 0, ""
	}
	if c.Mode == "standalone" {
		res.StepTiming = "pipelined" // see Step
	}
	prompt, err := engines.Prompt(e.Tokenizer(), c.Prompt, c.Chat)
	if err != nil {
		return res, err
	}
	out := newTextStream(e.Tokenizer(), onToken)
	st, err := e.Generate(ctx, request(c, prompt), out.emit)
	fill(&res, st, out.finish())
	if err != nil {
		return res, fmt.Errorf("%s run: %w", c.Mode, err)
	}
	return res, nil
}

// request is the engine request of a configuration.
func request(c Config, prompt []int) engines.Request {
	return engines.Request{Tokens: prompt, MaxTokens: c.MaxTokens, Temperature: c.Temperature, TopP: c.TopP,
		Seed: c.Seed, IgnoreEOS: c.IgnoreEOS}
}

// textStream decodes generated tokens into text as they come, passing each piece to onToken.
// The end-of-sequence token that stops generation is counted but not shown.
type textStream struct {
	dec     *tokenizer.StreamDecoder
	eos     map[int]bool
	text    []byte
	onToken func(string)
}

func newTextStream(tok *tokenizer.Tokenizer, onToken func(string)) *textStream {
	t := &textStream{dec: tok.NewStreamDecoder(), eos: map[int]bool{}, onToken: onToken}
	for _, id := range tok.EOS() {
		t.eos[id] = true
	}
	return t
}

func (t *textStream) emit(tk engines.Token) error {
	if !t.eos[tk.ID] {
		t.add(t.dec.Add(tk.ID))
	}
	return nil
}

func (t *textStream) add(s string) {
	t.text = append(t.text, s...)
	if t.onToken != nil && s != "" {
		t.onToken(s)
	}
}

// finish flushes the decoder and returns the whole text.
func (t *textStream) finish() string {
	t.add(t.dec.Flush())
	return string(t.text)
}

// fill copies engine statistics into a Result.
func fill(res *Result, st engines.Stats, text string) {
	res.PromptTokens = st.PromptTokens
	res.Tokens = st.Tokens
	if res.Tokens == nil {
		res.Tokens = []int{}
	}
	res.Text = text
	res.FinishReason = st.FinishReason
	res.TTFTMS = ms(st.TTFT)
	res.PrefillTokS = PrefillTokS(st)
	res.PeakMemoryBytes = st.PeakMemory
	res.Steps = make([]Step, len(st.Steps))
	for i, s := range st.Steps {
		step := Step{ForwardMS: ms(s.Forward), SampleMS: ms(s.Sample), Tokens: 1, NetworkMS: ms(s.Network), Bytes: s.Bytes, HostSyncs: s.Syncs.Total()}
		for _, f := range s.StageForward {
			step.StageForwardMS = append(step.StageForwardMS, ms(f))
		}
		for _, h := range s.Hops {
			step.HopNetworkMS = append(step.HopNetworkMS, ms(h))
		}
		res.Steps[i] = step
	}
	res.DecodeTokS = DecodeTokS(st)
	if st.Spec != nil {
		fillSpec(res, st, *st.Spec)
	}
}

// fillSpec adds what speculation did: per-step draft times and accepted tokens, and the
// acceptance statistics.
func fillSpec(res *Result, st engines.Stats, ss engines.SpecStats) {
	for i := range res.Steps {
		if i < len(ss.Steps) {
			s := ss.Steps[i]
			res.Steps[i].DraftMS = ms(s.Draft)
			res.Steps[i].Accepted = s.Accepted
			res.Steps[i].Tokens = s.Accepted + 1
			res.Steps[i].SampleMS = 0
		}
	}
	acc := &Acceptance{Drafted: ss.Drafted, Accepted: ss.Accepted, ByPosition: make([]float64, len(ss.ByPosition)), NormalisedSteps: ss.Normalised}
	if ss.Drafted > 0 {
		acc.Rate = float64(ss.Accepted) / float64(ss.Drafted)
	}
	if len(ss.Steps) > 0 {
		acc.MeanAccepted = float64(ss.Accepted) / float64(len(ss.Steps))
	}
	for _, s := range ss.Steps {
		if s.Drafted == 0 {
			acc.NoDraftSteps++
		}
	}
	for i := range ss.ByPosition {
		if ss.DraftedByPosition[i] > 0 {
			acc.ByPosition[i] = float64(ss.ByPosition[i]) / float64(ss.DraftedByPosition[i])
		}
	}
	res.Acceptance = acc
}
