// Package launch turns a run configuration (mode, model, dtype, drafter, pipeline layout) into a
// Generator. It is the one place that knows the execution modes: bench, experiments and serve open
// their generators here and never switch on the mode themselves.
package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/tokenizer"
	"github.com/hippo-bench/hippo/transport"
)

// The execution modes.
const (
	Standalone   = "standalone"
	Pipeline     = "pipeline"
	Spec         = "spec"
	PipelineSpec = "pipeline+spec"
)

// Modes lists the execution modes, for help texts and errors.
var Modes = []string{Standalone, Pipeline, Spec, PipelineSpec}

// Config is how to run a model. The zero value of every field but Model picks a default
// (standalone, the backend's dtype, loopback link, two balanced stages).
type Config struct {
	// Mode is one of Modes ("" is standalone).
	Mode string
	// Model is a checkpoint directory.
	Model string
	// DType is the compute dtype (f32, bf16, f16); empty means engines.DefaultDType().
	DType string
	// Context and RAM are the memory guard's plan (see engines.Options).
	Context int
	RAM     int64

	// Drafter is model, lookup or dflash (speculative modes); Draft its checkpoint directory.
	Drafter string
	Draft   string
	// DraftTokens is K, the tokens drafted per step; 0 means 4, or a dflash draft's block - 1.
	DraftTokens int
	// DraftConfidence, above 0, cuts each greedy dflash draft where the drafter's joint
	// probability of its drafts falls below it (engines.DFlashDrafter.SetConfidence); other
	// drafters refuse it.
	DraftConfidence float64

	// Stages or Split lay out a pipeline; Link is the emulated link profile, Transport tcp or
	// mlx-ring, Reply token or topk:K.
	Stages    int
	Split     string
	Link      string
	Transport string
	Reply     string
	// Hosts is a hosts file (pipeline.LoadHosts) naming ranks already running on other machines;
	// empty starts the other stages here as child processes of Exe.
	Hosts string
	// Exe is the hippo binary that serves local pipeline stages (`hippo rank`); empty means this
	// executable.
	Exe string
	// MaxBatch, when above 0, runs a standalone model through an engines.Batcher that decodes up
	// to MaxBatch generations at once (continuous batching): Generate calls may then overlap, and
	// the Generator has a MaxBatch() int method saying how many (see serve.Batching). Other modes
	// ignore it and run one generation at a time.
	MaxBatch int
}

// Generator is an opened configuration. Generate calls must not overlap; emit runs on the
// generator's goroutine or MLX thread, must not call the Generator, and an error from it stops
// the generation and is returned. In speculative modes Stats.Spec holds the acceptance
// statistics, and a Token's Step is shared by every token that one verify step emitted.
type Generator interface {
	Tokenizer() *tokenizer.Tokenizer
	Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error)
	// Info says how the generator runs.
	Info() Info
	// Close frees what the generator holds (nothing, for one lent by a Loader).
	Close()
}

// Info describes an opened configuration after its defaults were resolved.
type Info struct {
	Mode  string
	DType string
	// Stages, Split, Link and Transport describe a pipeline (0 and "" otherwise). Split is the
	// one the driver runs, also when it planned it from the ranks' free memory.
	Stages          int
	Split           string
	Link, Transport string
	// DraftTokens is K in speculative modes.
	DraftTokens int
	// WeightBytes is the memory the target's weights take on all stages together.
	WeightBytes int64
	// MaxBatch is how many generations run at once (1 unless batched; see Config.MaxBatch).
	MaxBatch int

	cfg     *model.Config
	dt      mlx.DType
	context int
}

// KVBytes is the KV cache one sequence of tokens positions holds, summed over every stage.
func (i Info) KVBytes(tokens int) int64 {
	if i.cfg == nil {
		return 0
	}
	return engines.EstimateMemory(i.cfg, i.dt, tokens).KVCache
}

// Context is the longest prompt plus generation the memory guard planned for.
func (i Info) Context() int { return i.context }

// Speculative reports whether mode drafts and verifies (spec and pipeline+spec).
func Speculative(mode string) bool { return mode == Spec || mode == PipelineSpec }

// Check refuses a configuration that cannot run, without loading anything: an unknown mode,
// drafter, transport, link or reply, a speculative mode without the draft its drafter needs, and
// combinations the engines do not support.
func Check(c Config) error {
	mode := orDefault(c.Mode, Standalone)
	if !slices.Contains(Modes, mode) {
		return fmt.Errorf("mode %q: use %s", c.Mode, strings.Join(Modes, ", "))
	}
	speculative := Speculative(mode)
	if speculative {
		switch c.Drafter {
		case "lookup":
		case "model", "dflash":
			if c.Draft == "" {
				return fmt.Errorf("drafter %s needs a draft checkpoint: give --draft DIR", c.Drafter)
			}
		default:
			return fmt.Errorf("unknown drafter %q: use model, lookup or dflash", c.Drafter)
		}
	}
	if mode != Pipeline && mode != PipelineSpec {
		return nil
	}
	tr, err := pipeline.ParseTransport(c.Transport)
	if err != nil {
		return err
	}
	if mode == PipelineSpec && pipeline.OverMLX(tr) {
		// The drafter runs MLX on its own thread while the ring waits on another, and this
		// process's MLX scope state is not safe for that overlap.
		return fmt.Errorf("pipeline+spec runs over --transport tcp only (its drafter would run MLX beside the ring's thread)")
	}
	if _, err := transport.ParseProfile(orDefault(c.Link, "loopback")); err != nil {
		return err
	}
	if _, err := ParseReply(c.Reply); err != nil {
		return err
	}
	if c.Hosts != "" {
		if _, err := pipeline.LoadHosts(c.Hosts); err != nil {
			return err
		}
	}
	return nil
}

// Open loads c. The returned Generator owns everything it loaded; Close it.
func Open(ctx context.Context, c Config) (Generator, error) {
	l := &Loader{}
	g, err := l.Load(ctx, c)
	if err != nil {
		l.Close()
		return nil, err
	}
	if b, ok := g.(*batched); ok {
		// Keep the optional abilities (MaxBatch, Occupancy) visible through the wrapper.
		return ownedBatched{b, l}, nil
	}
	return owned{g, l}, nil
}

// ownedBatched is owned for a batched generator.
type ownedBatched struct {
	*batched
	l *Loader
}

func (o ownedBatched) Close() { o.l.Close() }

// owned is a Loader's generator that closes its Loader.
type owned struct {
	Generator
	l *Loader
}

func (o owned) Close() { o.l.Close() }

// Loader opens configurations and keeps what it loaded for the next: repeats and neighbouring
// configurations on the same model never reload weights (standalone and spec share the target
// engine; a pipeline keeps its stages running). One model is in memory at a time: loading a
// pipeline frees the standalone engine and the other way round. Calls must not overlap; a
// Generator from Load is valid until the next Load or Close.
type Loader struct {
	engKey string
	eng    *engines.Engine

	draftKey   string
	draft      engines.Drafter
	draftClose func()

	pipeKey string
	local   *pipeline.Local
	driver  *pipeline.Driver

	batchKey string
	batcher  *engines.Batcher
}

// batcherFor returns the Batcher of engine e for c, starting it when it changed.
func (l *Loader) batcherFor(e *engines.Engine, c Config) (*engines.Batcher, error) {
	key := fmt.Sprintf("%p|%d|%d|%d", e, c.MaxBatch, c.Context, c.RAM)
	if l.batcher != nil && l.batchKey == key {
		return l.batcher, nil
	}
	l.closeBatcher()
	b, err := engines.NewBatcher(e, engines.BatchOptions{MaxBatch: c.MaxBatch, Context: c.Context, RAM: c.RAM})
	if err != nil {
		return nil, err
	}
	l.batcher, l.batchKey = b, key
	return b, nil
}

func (l *Loader) closeBatcher() {
	if l.batcher != nil {
		l.batcher.Close()
		l.batcher, l.batchKey = nil, ""
	}
}

// Load opens c, reusing what the previous Load loaded where it can.
func (l *Loader) Load(ctx context.Context, c Config) (Generator, error) {
	if c.Model == "" {
		return nil, errors.New("launch: no model: give a checkpoint directory")
	}
	if err := Check(c); err != nil {
		return nil, err
	}
	if c.DType == "" {
		c.DType = engines.DefaultDType()
	}
	dt, err := mlx.ParseDType(c.DType)
	if err != nil {
		return nil, err
	}
	cfg, err := model.ReadConfig(c.Model)
	if err != nil {
		return nil, err
	}
	if c.Context == 0 {
		c.Context = 4096
	}
	info := Info{Mode: orDefault(c.Mode, Standalone), DType: dt.String(), cfg: cfg, dt: dt, context: c.Context, MaxBatch: 1}
	switch info.Mode {
	case Standalone:
		e, err := l.engine(ctx, c)
		if err != nil {
			return nil, err
		}
		info.WeightBytes = e.WeightBytes()
		if c.MaxBatch > 0 {
			b, err := l.batcherFor(e, c)
			if err != nil {
				return nil, err
			}
			info.MaxBatch = b.MaxBatch()
			return &batched{b, e, info}, nil
		}
		return &plain{e, info}, nil
	case Spec:
		if c.Drafter != "lookup" {
			// Each model's own check at load sees only itself; together they must fit too.
			draft, err := model.ReadConfig(c.Draft)
			if err != nil {
				return nil, fmt.Errorf("draft model: %w", err)
			}
			if err := engines.CheckSpecMemory(cfg, draft, dt, c.Context, c.RAM); err != nil {
				return nil, err
			}
		}
		e, err := l.engine(ctx, c)
		if err != nil {
			return nil, err
		}
		d, err := l.drafter(ctx, c, e)
		if err != nil {
			return nil, err
		}
		info.WeightBytes = e.WeightBytes()
		if info.DraftTokens, err = draftTokens(c.DraftTokens, d, c.Draft); err != nil {
			return nil, err
		}
		return &spec{target: e, tok: e.Tokenizer(), d: d, info: info}, nil
	case Pipeline, PipelineSpec:
		return l.pipeline(ctx, c, info)
	}
	return nil, fmt.Errorf("mode %q: use standalone, pipeline, spec or pipeline+spec", c.Mode)
}

// engine returns the standalone engine of c, loading it (and freeing everything else) when the
// loaded one differs.
func (l *Loader) engine(ctx context.Context, c Config) (*engines.Engine, error) {
	key := fmt.Sprintf("%s|%s|%d|%d", c.Model, c.DType, c.Context, c.RAM)
	if l.eng != nil && l.engKey == key {
		return l.eng, nil
	}
	l.Close()
	e, err := engines.Open(ctx, engines.Options{Model: c.Model, DType: c.DType, Context: c.Context, RAM: c.RAM})
	if err != nil {
		return nil, err
	}
	l.eng, l.engKey = e, key
	return e, nil
}

// drafter returns c's drafter for target (nil in pipeline modes), loading it when it changed.
func (l *Loader) drafter(ctx context.Context, c Config, target *engines.Engine) (engines.Drafter, error) {
	key := fmt.Sprintf("%s|%s|%s|%p", c.Drafter, c.Draft, c.DType, target)
	if l.draft != nil && l.draftKey == key {
		return l.draft, gateDrafts(l.draft, c.DraftConfidence)
	}
	l.closeDraft()
	d, closer, err := NewDrafter(ctx, c.Drafter, c.Draft, c.DType, target)
	if err != nil {
		return nil, err
	}
	l.draft, l.draftKey, l.draftClose = d, key, closer
	return d, gateDrafts(d, c.DraftConfidence)
}

// gateDrafts sets a dflash drafter's draft confidence (0 included, so that a reused drafter
// drops an earlier one); other drafters take none.
func gateDrafts(d engines.Drafter, confidence float64) error {
	if df, ok := d.(*engines.DFlashDrafter); ok {
		return df.SetConfidence(confidence)
	}
	if confidence != 0 {
		return fmt.Errorf("draft confidence %g: only the dflash drafter cuts its drafts by confidence; leave it 0 for other drafters", confidence)
	}
	return nil
}

// pipeline returns the pipeline generator of c, starting the driver (and local stages) when the
// running pipeline differs.
func (l *Loader) pipeline(ctx context.Context, c Config, info Info) (Generator, error) {
	plan, err := Plan(c)
	if err != nil {
		return nil, err
	}
	topK, err := ParseReply(c.Reply)
	if err != nil {
		return nil, err
	}
	if c.Hosts != "" {
		h, err := pipeline.LoadHosts(c.Hosts)
		if err != nil {
			return nil, err
		}
		if len(h.Stages) != len(plan.Split) {
			return nil, fmt.Errorf("hosts: %s lists %d stages, the split has %d", c.Hosts, len(h.Stages), len(plan.Split))
		}
	}
	p := &pipe{l: l, c: c, plan: plan, topK: topK, info: info}
	p.info.Stages = len(plan.Split)
	p.info.Link = plan.Link.String()
	p.info.Transport = plan.Transport
	p.info.WeightBytes = engines.EstimateMemory(info.cfg, info.dt, 0).Weights
	d, err := l.driverFor(ctx, p)
	if err != nil {
		return nil, err
	}
	p.tok = d.Tokenizer()
	p.info.Split = pipeline.FormatSplit(d.Split())
	if info.Mode == PipelineSpec {
		// The drafter lives on the driver's machine, next to stage 0 (a dflash draft on stage
		// 0's thread, conditioned on the features every stage returns).
		if p.d, err = l.pipeDrafter(ctx, c, d); err != nil {
			return nil, err
		}
		if p.info.DraftTokens, err = draftTokens(c.DraftTokens, p.d, c.Draft); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// pipeDrafter returns c's drafter for a pipeline driven by d, loading it when it changed: a
// dflash drafter runs beside d's stage 0, the others on their own.
func (l *Loader) pipeDrafter(ctx context.Context, c Config, d *pipeline.Driver) (engines.Drafter, error) {
	if c.Drafter != "dflash" {
		return l.drafter(ctx, c, nil)
	}
	key := fmt.Sprintf("%s|%s|%s|stage %p", c.Drafter, c.Draft, c.DType, d.Stage())
	if l.draft != nil && l.draftKey == key {
		return l.draft, gateDrafts(l.draft, c.DraftConfidence)
	}
	l.closeDraft()
	dr, err := engines.NewStageDFlashDrafter(ctx, d.Stage(), c.Draft)
	if err != nil {
		return nil, err
	}
	if err := gateDrafts(dr, c.DraftConfidence); err != nil {
		dr.Close()
		return nil, err
	}
	l.draft, l.draftKey, l.draftClose = dr, key, dr.Close
	return dr, nil
}

// driverFor returns the running driver of p's plan, starting it when none runs or another does.
func (l *Loader) driverFor(ctx context.Context, p *pipe) (*pipeline.Driver, error) {
	plan := p.plan
	key := fmt.Sprintf("%s|%s|%s|%s|%s|%s", plan.Model, plan.DType, pipeline.FormatSplit(plan.Split), plan.Link, p.c.Hosts, plan.Transport)
	if l.driver != nil && l.pipeKey == key {
		if err := l.driver.Alive(ctx); err == nil {
			l.driver.ReplyTopK = p.topK
			return l.driver, nil
		}
		// The ranks closed the session (idle past their --idle-timeout, or restarted): start again.
	}
	l.closeEngine() // one copy of the model in memory at a time
	l.closePipeline()
	addr := ""
	if p.c.Hosts != "" {
		h, err := pipeline.LoadHosts(p.c.Hosts)
		if err != nil {
			return nil, err
		}
		if addr = h.Stages[1].Addr; pipeline.OverMLX(plan.Transport) {
			addr = "" // each machine's MLX_RANK and MLX_HOSTFILE describe the ring
		}
	} else {
		exe := p.c.Exe
		if exe == "" {
			var err error
			if exe, err = os.Executable(); err != nil {
				return nil, err
			}
		}
		local, err := pipeline.Launch(ctx, exe, plan)
		if err != nil {
			return nil, err
		}
		l.local, addr = local, local.Addr
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	d, err := pipeline.OpenDriver(dctx, plan, addr)
	cancel()
	if err != nil {
		logs := ""
		if l.local != nil {
			logs = "\nstage logs:\n" + l.local.Logs()
		}
		l.closePipeline()
		return nil, fmt.Errorf("%w%s", err, logs)
	}
	d.ReplyTopK = p.topK
	l.driver, l.pipeKey = d, key
	return d, nil
}

// Local returns the pipeline stages running as child processes (nil when none), for tests and
// CPU accounting.
func (l *Loader) Local() *pipeline.Local { return l.local }

func (l *Loader) closeDraft() {
	if l.draftClose != nil {
		l.draftClose()
	}
	l.draft, l.draftClose, l.draftKey = nil, nil, ""
}

func (l *Loader) closeEngine() {
	l.closeBatcher() // it runs on the engine
	if _, ok := l.draft.(engines.FeatureDrafter); ok {
		l.closeDraft() // a dflash drafter lives on the engine's thread and dies with it
	}
	if l.eng != nil {
		l.eng.Close()
		l.eng, l.engKey = nil, ""
	}
}

func (l *Loader) closePipeline() {
	if d, ok := l.draft.(*engines.DFlashDrafter); ok && d.Stage() != nil {
		l.closeDraft() // it lives on stage 0's thread and dies with it
	}
	if l.driver != nil {
		l.driver.Close()
		l.driver = nil
	}
	if l.local != nil {
		l.local.Stop()
		l.local = nil
	}
	l.pipeKey = ""
}

// Close frees every engine and drafter and stops any pipeline.
func (l *Loader) Close() error {
	l.closeDraft()
	l.closeEngine()
	l.closePipeline()
	return nil
}

// NewDrafter builds the drafter called name. A model drafter opens its checkpoint (draftDir); a
// dflash drafter loads its draft checkpoint (draftDir) onto target, the engine it will draft for
// (pipelines build theirs beside the driver's stage with engines.NewStageDFlashDrafter). The
// caller calls the returned close function, if not nil, before closing target.
func NewDrafter(ctx context.Context, name, draftDir, dtype string, target *engines.Engine) (engines.Drafter, func(), error) {
	switch name {
	case "lookup":
		return engines.LookupDrafter{}, nil, nil
	case "model":
		if draftDir == "" {
			return nil, nil, fmt.Errorf("drafter model needs a draft checkpoint: give --draft DIR (a smaller model with the same tokenizer)")
		}
		de, err := engines.Open(ctx, engines.Options{Model: draftDir, DType: dtype})
		if err != nil {
			return nil, nil, fmt.Errorf("draft model: %w", err)
		}
		return engines.NewModelDrafter(de), de.Close, nil
	case "dflash":
		if draftDir == "" {
			return nil, nil, fmt.Errorf("drafter dflash needs a DFlash draft checkpoint: give --draft DIR (e.g. one written by `hippo synth --arch dflash`)")
		}
		if target == nil {
			return nil, nil, fmt.Errorf("drafter dflash drafts from the target's hidden states: give it the target engine (a pipeline driver builds its own beside stage 0)")
		}
		d, err := engines.NewDFlashDrafter(ctx, target, draftDir)
		if err != nil {
			return nil, nil, err
		}
		return d, d.Close, nil
	}
	return nil, nil, fmt.Errorf("unknown drafter %q: use model, lookup or dflash", name)
}

// draftTokens is K: as configured, or 4, or a dflash draft's whole trained block. A block
// drafter drafts at most its block - 1 tokens a step, so a larger K is refused rather than run
// (and recorded) as K while drafting fewer.
func draftTokens(k int, d engines.Drafter, dir string) (int, error) {
	b, block := d.(interface{ BlockSize() int })
	switch {
	case k > 0 && block && k > b.BlockSize()-1:
		return 0, fmt.Errorf("draft_tokens %d: the dflash draft %s was trained on blocks of %d, so it drafts at most %d tokens a step; use draft_tokens <= %d", k, dir, b.BlockSize(), b.BlockSize()-1, b.BlockSize()-1)
	case k > 0:
		return k, nil
	case block:
		return b.BlockSize() - 1, nil
	}
	return 4, nil
}

// plain is the standalone engine.
type plain struct {
	e    *engines.Engine
	info Info
}

func (p *plain) Tokenizer() *tokenizer.Tokenizer { return p.e.Tokenizer() }
func (p *plain) Info() Info                      { return p.info }
func (p *plain) Close()                          {}
func (p *plain) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	return p.e.Generate(ctx, r, emit)
}

// batched is a standalone engine behind a Batcher: Generate calls may overlap. It has the
// optional abilities serve looks for (serve.Batching, serve.Occupier).
var _ interface {
	MaxBatch() int
	Occupancy() (int, int64, int64)
} = (*batched)(nil)

// batched is a standalone engine behind a Batcher: Generate calls may overlap.
type batched struct {
	b    *engines.Batcher
	e    *engines.Engine
	info Info
}

func (g *batched) Tokenizer() *tokenizer.Tokenizer { return g.e.Tokenizer() }
func (g *batched) Info() Info                      { return g.info }
func (g *batched) Close()                          {}

// MaxBatch is how many Generate calls may run at once.
func (g *batched) MaxBatch() int { return g.b.MaxBatch() }

// Occupancy reports the sequences admitted (prefilling or decoding), the KV cache the decode
// batch holds (its allocated slots, padding included) and the most the batcher may hold: MaxBatch
// sequences of the context (serve.Occupier). It may be called from any goroutine.
func (g *batched) Occupancy() (running int, kvBytes, kvCapacity int64) {
	l := g.b.Load()
	return l.Running, l.KVBytes, int64(g.b.MaxBatch()) * g.info.KVBytes(g.info.context)
}

func (g *batched) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	return g.b.Generate(ctx, r, emit)
}

// specTarget verifies drafts: the standalone engine or a pipeline driver.
type specTarget interface {
	GenerateSpec(ctx context.Context, r engines.Request, d engines.Drafter, k int, emit func(engines.Token) error) (engines.Stats, engines.SpecStats, error)
}

var (
	_ specTarget = (*engines.Engine)(nil)
	_ specTarget = (*pipeline.Driver)(nil)
)

// spec decodes speculatively on the standalone engine.
type spec struct {
	target specTarget
	tok    *tokenizer.Tokenizer
	d      engines.Drafter
	info   Info
}

func (s *spec) Tokenizer() *tokenizer.Tokenizer { return s.tok }
func (s *spec) Info() Info                      { return s.info }
func (s *spec) Close()                          {}
func (s *spec) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	st, ss, err := s.target.GenerateSpec(ctx, r, s.d, s.info.DraftTokens, emit)
	st.Spec = &ss
	return st, err
}

// pipe runs a pipeline, with speculation when d is set. A generation that fails for any reason
// but a clean stop (cancellation between steps, or an error from emit) may leave a stage's state
// or the link torn: the pipeline is then restarted by the next Generate.
type pipe struct {
	l    *Loader
	c    Config
	plan pipeline.Plan
	topK int
	tok  *tokenizer.Tokenizer
	d    engines.Drafter
	info Info
}

func (p *pipe) Tokenizer() *tokenizer.Tokenizer { return p.tok }
func (p *pipe) Info() Info                      { return p.info }
func (p *pipe) Close()                          {}

// errEmit marks an error returned by the caller's emit.
type errEmit struct{ err error }

func (e errEmit) Error() string { return e.err.Error() }
func (e errEmit) Unwrap() error { return e.err }

func (p *pipe) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	d, err := p.l.driverFor(ctx, p)
	if err != nil {
		return engines.Stats{}, err
	}
	wrapped := func(t engines.Token) error {
		if err := emit(t); err != nil {
			return errEmit{err}
		}
		return nil
	}
	var st engines.Stats
	if p.d != nil {
		if p.c.Drafter == "dflash" { // a restarted pipeline has a new stage 0 to draft beside
			if p.d, err = p.l.pipeDrafter(ctx, p.c, d); err != nil {
				return st, err
			}
		}
		var ss engines.SpecStats
		st, ss, err = d.GenerateSpec(ctx, r, p.d, p.info.DraftTokens, wrapped)
		st.Spec = &ss
	} else {
		st, err = d.Generate(ctx, r, wrapped)
	}
	var ee errEmit
	switch {
	case errors.As(err, &ee):
		return st, ee.err
	case err != nil && !errors.Is(err, engines.ErrCanceled):
		p.l.closePipeline()
	}
	return st, err
}
