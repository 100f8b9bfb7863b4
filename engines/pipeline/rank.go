package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/transport"
)

// Plan is what every rank of one pipeline agrees on.
type Plan struct {
	Model string // checkpoint directory (each machine has its own copy)
	DType string
	// Split is every stage's layer range. A rank's plan may leave it empty: the rank then loads
	// the range the driver assigns (see AutoSplit).
	Split []model.Range
	// AutoSplit makes the driver plan the split itself, over the TCP transport: it asks every
	// rank for the memory it can offer and splits the layers in proportion
	// (engines.SplitByMemory), then tells the ranks which layers to load. Split then only says
	// how many stages there are.
	AutoSplit bool
	// FreeMemory, when > 0, is what the driver counts as stage 0's free memory for AutoSplit,
	// instead of the machine's available memory.
	FreeMemory int64
	Link       transport.Profile
	Secret     string
	// Fingerprint of the checkpoint, compared in every handshake.
	Fingerprint string
	Layers      int
	// Transport is TransportTCP ("" too) or TransportRing.
	Transport string
	// Context and RAM, when set, are each stage's context cap and the RAM its memory guard
	// plans with (see Rank); Launch passes them to the stages it starts.
	Context int
	RAM     int64
	// IdleTimeout and NextTimeout, when set, are each rank's (see Rank).
	IdleTimeout, NextTimeout time.Duration

	// unsealed asks for frames in the clear after the handshake, which only the seal-cost
	// benchmark (build tag hippobench) can grant: elsewhere unseal leaves the options as they are.
	unsealed bool
	// sealTime, when set, adds up the time spent sealing and opening (the same benchmark).
	sealTime *atomic.Int64
}

// unseal switches sealing off in transport options, and timeSeal times it; the hippobench build
// sets them.
var (
	unseal   = func(o transport.Options) transport.Options { return o }
	timeSeal = func(o transport.Options, _ *atomic.Int64) transport.Options { return o }
)

// identity is stage's identity in the handshake; its layer range is left out when the split is
// not settled yet (a rank waiting for its assignment, a driver that will plan it).
func (p Plan) identity(stage int) transport.Identity {
	dt, _ := transport.ParseDType(p.DType)
	id := transport.Identity{Model: p.Fingerprint, TotalLayers: p.Layers, DType: dt, Stage: stage}
	if !p.AutoSplit && stage < len(p.Split) {
		id.Start, id.End = p.Split[stage].From, p.Split[stage].To
	}
	return id
}

func (p Plan) options(stage int, next bool) transport.Options {
	o := transport.Options{Self: p.identity(stage), Secret: p.Secret, Profile: p.Link, Seed: uint64(stage + 1)}
	if next {
		o.Peer = p.identity(stage + 1)
	}
	if p.unsealed {
		o = unseal(o)
	}
	if p.sealTime != nil {
		o = timeSeal(o, p.sealTime)
	}
	return o
}

// Defaults for the zero Rank.
const (
	// DefaultContext is a rank's context cap when neither Rank.Context nor the model's
	// max_position_embeddings says otherwise.
	DefaultContext = 4096
	// DefaultIdleTimeout closes a session whose driver sent nothing for this long, so a driver
	// that vanished without closing does not keep the rank busy forever.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultNextTimeout bounds how long a rank tries to reach the next stage when a session
	// starts, before it reports that stage down to the driver.
	DefaultNextTimeout = 10 * time.Second
)

// Rank serves stage k > 0 of a plan: it accepts the previous stage on a listener and, unless it
// is the last stage, forwards to the next one at Next. It serves one session (one driver
// connection) at a time: another driver that authenticates meanwhile is refused with ErrBusy,
// which names the session it waits for.
type Rank struct {
	Plan  Plan
	Stage int
	// Next is the address of stage Stage+1 ("" on the last stage).
	Next string
	// Log receives one line per connection; nil discards.
	Log *log.Logger
	// Context caps the positions (prompt and generated tokens) one session may hold in this
	// stage's KV cache; a Forward beyond it is refused with ErrLimit. Default: the plan's
	// Context, else the model's max_position_embeddings, else DefaultContext.
	Context int
	// RAM is what the memory guard plans with (the machine's when 0): Serve refuses to start
	// when the stage's weights and a KV cache of Context positions do not fit.
	RAM int64
	// IdleTimeout closes a session whose driver is silent this long; default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// NextTimeout bounds reaching the next stage for a session; default DefaultNextTimeout.
	NextTimeout time.Duration
	// FreeMemory, when > 0, is the memory this rank offers a driver that plans the split from
	// the ranks' free memory, instead of what the machine has available.
	FreeMemory int64

	mu      sync.Mutex
	current string    // the driver being served, "" when idle
	since   time.Time // when its session started

	// The loaded stage. A rank whose plan has a split loads its range before serving; one
	// without waits for a driver's Assign, and keeps what it loaded for the next session.
	// Only the one session touches it, and Serve once the sessions are over.
	stage *engines.Stage
	cfg   *model.Config
}

func (r *Rank) logf(format string, args ...any) {
	if r.Log != nil {
		r.Log.Printf(format, args...)
	}
}

// ListenOptions are the transport options the rank listens with: its identity and secret, its
// idle timeout and the admission check that answers ErrBusy while a session runs.
func (r *Rank) ListenOptions() transport.Options {
	o := r.Plan.options(r.Stage, false)
	o.IdleTimeout = r.idleTimeout()
	o.Admit = func(transport.Identity) error { return r.busy() }
	return o
}

// Listen checks that addr may be served with the plan's secret (see CheckExposure) and listens
// on it with ListenOptions.
func (r *Rank) Listen(ctx context.Context, addr string) (*transport.Listener, error) {
	if err := CheckExposure(addr, r.Plan.Secret); err != nil {
		return nil, err
	}
	return transport.Listen(ctx, addr, r.ListenOptions())
}

func (r *Rank) idleTimeout() time.Duration {
	switch {
	case r.IdleTimeout > 0:
		return r.IdleTimeout
	case r.Plan.IdleTimeout > 0:
		return r.Plan.IdleTimeout
	}
	return DefaultIdleTimeout
}

// busy returns the ErrBusy refusal while a session runs, nil otherwise.
func (r *Rank) busy() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current == "" {
		return nil
	}
	idle := r.idleTimeout()
	return &transport.Error{Code: transport.CodeBusy, Message: fmt.Sprintf(
		"stage %d is busy serving %s since %s (a session idle for %v is closed): wait for that run to end, or stop it",
		r.Stage, r.current, r.since.Format(time.TimeOnly), idle)}
}

// claim makes peer the session being served, unless another one is.
func (r *Rank) claim(peer string) error {
	if err := r.busy(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current != "" {
		return fmt.Errorf("stage %d is busy", r.Stage)
	}
	r.current, r.since = peer, time.Now()
	return nil
}

func (r *Rank) release() {
	r.mu.Lock()
	r.current = ""
	r.mu.Unlock()
}

// contextCap returns the rank's context cap for model config c.
func (r *Rank) contextCap(c *model.Config) int {
	switch {
	case r.Context > 0:
		return r.Context
	case r.Plan.Context > 0:
		return r.Plan.Context
	case c.MaxPositionEmbeddings > 0:
		return c.MaxPositionEmbeddings
	}
	return DefaultContext
}

// checkStageMemory refuses a stage whose weights and KV cache for context positions need more
// than engines.SafetyFactor of ram (the machine's when 0).
func checkStageMemory(c *model.Config, dtype string, rg model.Range, context int, ram int64) error {
	dt, err := mlx.ParseDType(dtype)
	if err != nil {
		return err
	}
	if ram == 0 {
		if ram, err = engines.SystemRAM(); err != nil {
			return nil // cannot tell: let MLX try
		}
	}
	e := engines.StageMemory(c, dt, rg, context)
	limit := int64(float64(ram) * engines.SafetyFactor)
	if e.Total() <= limit {
		return nil
	}
	return fmt.Errorf("%w: layers [%d,%d) need %s (weights %s + KV cache %s for %d positions + runtime %s), %s usable of %s RAM: lower --context, split the model over more stages, or use a quantized checkpoint",
		engines.ErrMemory, rg.From, rg.To, engines.FormatBytes(e.Total()), engines.FormatBytes(e.Weights), engines.FormatBytes(e.KVCache),
		context, engines.FormatBytes(e.Overhead), engines.FormatBytes(limit), engines.FormatBytes(ram))
}

// deferred says whether the rank waits for the driver to assign its layers.
func (r *Rank) deferred() bool { return len(r.Plan.Split) == 0 }

// Serve loads the stage and answers drivers until ctx ends or ln is closed. Handshakes run in
// the listener, off this loop; each authenticated connection becomes a session in its own
// goroutine, one at a time. A session that ends (the driver finished, died, went idle, or sent
// something refused) is logged and the rank keeps serving; the caches are reset by each
// request's Reset, so nothing leaks between drivers. A next stage that cannot be reached is
// reported to the driver, and the rank keeps listening.
//
// A rank whose plan has no split loads nothing before a driver assigns its layers (Assign,
// after answering the driver's Survey with FreeMemory); it is the last stage when it has no Next.
func (r *Rank) Serve(ctx context.Context, ln *transport.Listener) error {
	if r.Stage < 1 || (!r.deferred() && r.Stage >= len(r.Plan.Split)) {
		return fmt.Errorf("rank: stage %d: ranks serve stages 1 to %d (stage 0 is the driver)", r.Stage, len(r.Plan.Split)-1)
	}
	if r.NextTimeout <= 0 {
		r.NextTimeout = r.Plan.NextTimeout
	}
	if r.NextTimeout <= 0 {
		r.NextTimeout = DefaultNextTimeout
	}
	cfg, err := model.ReadConfig(r.Plan.Model)
	if err != nil {
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	r.cfg = cfg
	ctxCap := r.contextCap(cfg)
	defer func() {
		if r.stage != nil {
			r.stage.Close()
			r.stage = nil
		}
	}()
	if r.deferred() {
		r.logf("stage %d ready on %s: waiting for a driver to assign layers of %s, context cap %d positions", r.Stage, ln.Addr(), r.Plan.Model, ctxCap)
	} else {
		if err := r.load(ctx, r.Plan.Split[r.Stage], ctxCap); err != nil {
			return fmt.Errorf("rank %d: %w", r.Stage, err)
		}
		r.logf("stage %d ready on %s: layers [%d,%d) of %s, context cap %d positions", r.Stage, ln.Addr(), r.stage.Range().From, r.stage.Range().To, r.Plan.Model, ctxCap)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	// Refusals are logged at most 10 a second for each kind (peers that hung up or were
	// dropped; everything else), so a flood can neither fill the disk nor hide other refusals.
	var window time.Time
	var logged, dropped [2]int
	for {
		up, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if now := time.Now(); now.Sub(window) > time.Second {
				if n := dropped[0] + dropped[1]; n > 0 {
					r.logf("stage %d: refused %d more connections (not logged)", r.Stage, n)
				}
				window, logged, dropped = now, [2]int{}, [2]int{}
			}
			kind := 0
			if errors.Is(err, transport.ErrPeerGone) {
				kind = 1
			}
			if logged[kind]++; logged[kind] > 10 {
				dropped[kind]++
				continue
			}
			r.logf("stage %d: refused a connection: %v", r.Stage, err)
			continue
		}
		if err := r.claim(up.String()); err != nil {
			// Two drivers passed the admission check at once; the later one learns it here.
			r.logf("stage %d: refused %s: %v", r.Stage, up, err)
			up.Send(ctx, 0, 0, &transport.Error{Code: transport.CodeBusy, Message: err.Error()})
			up.Close()
			continue
		}
		r.logf("stage %d: session with %s", r.Stage, up)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.release()
			err := r.run(ctx, up, ctxCap)
			if ctx.Err() == nil {
				r.logf("stage %d: session with %s ended: %v", r.Stage, up, err)
			}
		}()
	}
}

// load checks that layers rg fit the memory guard and loads them, replacing what was loaded.
func (r *Rank) load(ctx context.Context, rg model.Range, ctxCap int) error {
	if r.stage != nil {
		if r.stage.Range() == rg {
			return nil
		}
		r.stage.Close()
		r.stage = nil
	}
	ram := r.RAM
	if ram == 0 {
		ram = r.Plan.RAM
	}
	if err := checkStageMemory(r.cfg, r.Plan.DType, rg, ctxCap, ram); err != nil {
		return err
	}
	st, err := engines.OpenStage(ctx, engines.StageOptions{Model: r.Plan.Model, DType: r.Plan.DType, Range: rg})
	if err != nil {
		return err
	}
	r.stage = st
	return nil
}

// last says whether this rank is the pipeline's last stage.
func (r *Rank) last() bool {
	if r.deferred() {
		return r.Next == ""
	}
	return r.Stage == len(r.Plan.Split)-1
}

// run serves one session: it reaches the next stage, then answers up until it ends.
func (r *Rank) run(ctx context.Context, up *transport.Conn, ctxCap int) error {
	defer up.Close()
	var down *transport.Conn
	if !r.last() {
		dctx, cancel := context.WithTimeout(ctx, r.NextTimeout)
		var err error
		down, err = transport.Dial(dctx, r.Next, r.Plan.options(r.Stage, true))
		cancel()
		if err != nil {
			err = fmt.Errorf("stage %d: next stage %d at %s: %w", r.Stage, r.Stage+1, r.Next, err)
			up.Send(ctx, 0, 0, &transport.Error{Code: codeOf(err), Message: err.Error()})
			return err
		}
		defer down.Close()
	}
	return r.session(ctx, up, down, ctxCap)
}

// codeOf maps err to the wire code of its transport sentinel, so the driver can test it.
func codeOf(err error) transport.Code {
	for _, c := range []struct {
		code transport.Code
		err  error
	}{{transport.CodeAuth, transport.ErrAuth}, {transport.CodeModel, transport.ErrModelMismatch}, {transport.CodeRange, transport.ErrRange},
		{transport.CodeVersion, transport.ErrVersion}, {transport.CodeBusy, transport.ErrBusy}, {transport.CodeLimit, transport.ErrLimit}} {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return transport.CodeInternal
}

// free is the memory this rank offers a driver that plans the split: FreeMemory, else what the
// machine has available plus the weights of layers it loaded for an earlier session (which a
// new assignment replaces).
func (r *Rank) free() (int64, error) {
	if r.FreeMemory > 0 {
		return r.FreeMemory, nil
	}
	free, err := engines.AvailableRAM()
	if err != nil {
		return 0, fmt.Errorf("cannot tell this machine's free memory (%v): restart the rank with --report-memory SIZE, or give the driver --split", err)
	}
	if r.stage != nil && r.deferred() {
		if dt, err := mlx.ParseDType(r.Plan.DType); err == nil {
			free += engines.StageMemory(r.cfg, dt, r.stage.Range(), 0).Weights
		}
	}
	return free, nil
}

// assign checks the driver's split against this rank and loads its range.
func (r *Rank) assign(ctx context.Context, split []transport.Range, ctxCap int) error {
	rs := make([]model.Range, len(split))
	for i, x := range split {
		rs[i] = model.Range{From: x.From, To: x.To}
	}
	if err := checkSplit(rs, r.Plan.Layers); err != nil {
		return fmt.Errorf("the driver assigned %s: %w: %w", FormatSplit(rs), err, transport.ErrRange)
	}
	if r.Stage >= len(rs) {
		return fmt.Errorf("the driver's split %s has %d stages, this rank is stage %d: check the hosts file and the rank's --stage: %w", FormatSplit(rs), len(rs), r.Stage, transport.ErrRange)
	}
	if !r.deferred() {
		if have := r.Plan.Split[r.Stage]; have != rs[r.Stage] || len(rs) != len(r.Plan.Split) {
			return fmt.Errorf("this rank was started with --split %s and runs layers [%d,%d); the driver assigns %s: restart the rank without --split to let the driver choose, or give the driver the same --split: %w",
				FormatSplit(r.Plan.Split), have.From, have.To, FormatSplit(rs), transport.ErrRange)
		}
		return nil
	}
	if last := r.Stage == len(rs)-1; last != r.last() {
		if last {
			return fmt.Errorf("the driver's split %s makes stage %d the last, but this rank passes on to --next %s: check the hosts file: %w", FormatSplit(rs), r.Stage, r.Next, transport.ErrRange)
		}
		return fmt.Errorf("the driver's split %s has %d stages, but this rank (stage %d) has no --next: check the hosts file: %w", FormatSplit(rs), len(rs), r.Stage, transport.ErrRange)
	}
	if err := r.load(ctx, rs[r.Stage], ctxCap); err != nil {
		return err
	}
	r.logf("stage %d: loaded layers [%d,%d) of split %s", r.Stage, rs[r.Stage].From, rs[r.Stage].To, FormatSplit(rs))
	return nil
}

// session answers one upstream connection until it ends. pos is the number of positions this
// stage's cache holds, which Forward frames may grow only up to ctxCap.
func (r *Rank) session(ctx context.Context, up, down *transport.Conn, ctxCap int) error {
	var fw transport.Forward
	var reply transport.Reply
	pos := 0
	for {
		f, err := up.Recv(ctx)
		if err != nil {
			return err
		}
		switch f.Type {
		case transport.TypeBye:
			return io.EOF
		case transport.TypeSurvey:
			var q transport.Survey
			if err := f.Decode(&q); err != nil {
				return err
			}
			var m transport.Memory
			if down != nil {
				if err := down.Call(ctx, f.Session, f.Seq, &q, &m); err != nil {
					return r.fail(ctx, up, f, err)
				}
			}
			free, err := r.free()
			if err != nil {
				return r.fail(ctx, up, f, err)
			}
			m.Stages = append(m.Stages, transport.StageMemory{Stage: r.Stage, Free: free})
			if err := up.Send(ctx, f.Session, f.Seq, &m); err != nil {
				return err
			}
		case transport.TypeAssign:
			var m transport.Assign
			if err := f.Decode(&m); err != nil {
				return err
			}
			if err := r.assign(ctx, m.Split, ctxCap); err != nil {
				return r.fail(ctx, up, f, err)
			}
			if down != nil {
				if err := down.Call(ctx, f.Session, f.Seq, &m, &reply); err != nil {
					return r.fail(ctx, up, f, err)
				}
			}
			if err := up.Send(ctx, f.Session, f.Seq, &transport.Reply{}); err != nil {
				return err
			}
		case transport.TypeReset:
			var m transport.Reset
			if err := f.Decode(&m); err != nil {
				return err
			}
			st, err := r.loaded()
			if err != nil {
				return r.fail(ctx, up, f, err)
			}
			if err := st.Reset(ctx, m.Position, 0, 1, 0); err != nil {
				return r.fail(ctx, up, f, err)
			}
			pos = min(pos, m.Position)
			if down != nil {
				if err := down.Send(ctx, f.Session, f.Seq, &m); err != nil {
					return err
				}
			}
		case transport.TypeForward:
			if err := f.Decode(&fw); err != nil {
				return err
			}
			st, err := r.loaded()
			if err != nil {
				return r.fail(ctx, up, f, err)
			}
			if pos+fw.Tokens > ctxCap {
				return r.fail(ctx, up, f, fmt.Errorf("a request of %d positions exceeds this rank's context cap of %d: shorten the prompt or the generation, or restart the rank with a larger --context (its memory guard must allow it): %w",
					pos+fw.Tokens, ctxCap, transport.ErrLimit))
			}
			if err := r.forward(ctx, st, down, f, &fw, &reply); err != nil {
				var pe *transport.Error
				if errors.As(err, &pe) {
					return err
				}
				return r.fail(ctx, up, f, err)
			}
			pos += fw.Tokens
			if err := up.Send(ctx, f.Session, f.Seq, &reply); err != nil {
				return err
			}
		default:
			return r.fail(ctx, up, f, fmt.Errorf("unexpected %v frame: %w", f.Type, transport.ErrBadFrame))
		}
	}
}

// loaded returns the loaded stage, or an error when no driver assigned one yet.
func (r *Rank) loaded() (*engines.Stage, error) {
	if r.stage == nil {
		return nil, fmt.Errorf("this rank was started without --split and no layers were assigned to it: the driver must send its split first (run the same hippo build on every machine): %w", transport.ErrRange)
	}
	return r.stage, nil
}

func (r *Rank) forward(ctx context.Context, st *engines.Stage, down *transport.Conn, f transport.Frame, fw *transport.Forward, reply *transport.Reply) error {
	if len(fw.Shape) != 2 || fw.Shape[0] != fw.Tokens || fw.Shape[1] != st.Config().HiddenSize {
		return fmt.Errorf("rank %d: hidden state of shape %v; want [%d %d]", r.Stage, fw.Shape, fw.Tokens, st.Config().HiddenSize)
	}
	reply.Tokens, reply.TopK, reply.Timings, reply.Features = reply.Tokens[:0], reply.TopK[:0], reply.Timings[:0], reply.Features[:0]
	in := engines.Activation{Hidden: fw.Data, Len: fw.Tokens, Taps: fw.Taps}
	if st.Last() && fw.Sample != nil {
		dists, err := proposals(fw.Sample, st.Config().VocabSize)
		if err != nil {
			return err
		}
		res, err := st.VerifySampled(ctx, in, fw.Sample.Drafts, dists, float64(fw.Sample.Temperature), fw.Sample.Seed)
		if err != nil {
			return err
		}
		for _, id := range res.Tokens {
			reply.Tokens = append(reply.Tokens, int32(id))
		}
		r.addFeatures(st, reply, res.Features, fw.Tokens)
		reply.AddTiming(r.Stage, res.Forward)
		return nil
	}
	if st.Last() && fw.Outputs > 1 {
		res, err := st.Verify(ctx, in, fw.Outputs)
		if err != nil {
			return err
		}
		for _, id := range res.Tokens {
			reply.Tokens = append(reply.Tokens, int32(id))
		}
		r.addFeatures(st, reply, res.Features, fw.Tokens)
		reply.AddTiming(r.Stage, res.Forward)
		return nil
	}
	res, err := st.Forward(ctx, in, true, fw.TopK)
	if err != nil {
		return err
	}
	if st.Last() {
		reply.Tokens = append(reply.Tokens, int32(res.Token))
		for _, c := range res.TopK {
			reply.TopK = append(reply.TopK, transport.Candidate{ID: int32(c.ID), Logit: c.LogProb})
		}
	} else {
		next := transport.Forward{Position: fw.Position, Tokens: fw.Tokens, TopK: fw.TopK, Outputs: fw.Outputs, Taps: fw.Taps, Sample: fw.Sample, DType: fw.DType,
			Shape: fw.Shape, Data: res.Hidden.Hidden}
		t0 := time.Now()
		if err := down.Call(ctx, f.Session, f.Seq, &next, reply); err != nil {
			return err
		}
		// The hop to the next stage is the round trip minus what the later stages report.
		hop := time.Since(t0)
		for _, t := range reply.Timings {
			hop -= t.Forward + t.Network
		}
		reply.Timings = append(reply.Timings, transport.StageTiming{Stage: r.Stage, Forward: res.Forward, Network: max(hop, 0)})
		r.addFeatures(st, reply, res.Features, fw.Tokens)
		return nil
	}
	r.addFeatures(st, reply, res.Features, fw.Tokens)
	reply.AddTiming(r.Stage, res.Forward)
	return nil
}

// proposals expands a sampled verification's draft distributions into dense rows over the
// vocabulary (nil for deterministic drafts), refusing tokens outside it and rows that are not
// distributions.
func proposals(s *transport.Sampling, vocab int) ([][]float32, error) {
	if s.Proposals == nil {
		return nil, nil
	}
	out := make([][]float32, len(s.Proposals))
	for i, row := range s.Proposals {
		q := make([]float32, vocab)
		var sum float64
		for _, e := range row {
			if int(e.ID) >= vocab {
				return nil, fmt.Errorf("draft %d's distribution names token %d, outside the vocabulary of %d: %w", i, e.ID, vocab, transport.ErrBadFrame)
			}
			q[e.ID] += e.P
			sum += float64(e.P)
		}
		if math.Abs(sum-1) > 1e-3 {
			return nil, fmt.Errorf("draft %d's distribution sums to %g, not 1: %w", i, sum, transport.ErrBadFrame)
		}
		out[i] = q
	}
	return out, nil
}

// addFeatures appends the stage's tapped features, [tokens, hidden] each, to reply.
func (r *Rank) addFeatures(st *engines.Stage, reply *transport.Reply, feats []engines.Feature, tokens int) {
	dt, _ := transport.ParseDType(st.DType().String())
	for _, f := range feats {
		reply.Features = append(reply.Features, transport.Feature{Layer: f.Layer, DType: dt, Rows: tokens, Cols: st.Config().HiddenSize, Data: f.Data})
	}
}

// fail reports err to the previous stage, so the driver's error names where it happened.
func (r *Rank) fail(ctx context.Context, up *transport.Conn, f transport.Frame, err error) error {
	up.Send(ctx, f.Session, f.Seq, &transport.Error{Code: codeOf(err), Message: fmt.Sprintf("stage %d: %v", r.Stage, err)})
	return err
}

// CheckExposure refuses to serve or reach a pipeline beyond loopback without a shared secret:
// without one, anyone on the network could drive the rank, read the hidden states and tokens,
// or alter them. On loopback, frames are still sealed (which detects corruption) but with keys
// anyone can derive, so they protect nothing against other users of the same machine.
func CheckExposure(addr, secret string) error {
	if secret != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s is reachable beyond this machine and no shared secret is set: anyone on the network could drive the pipeline and read or alter its traffic: "+
		"create one (e.g. `head -c 32 /dev/urandom | base64 > ~/.hippo-secret; chmod 600 ~/.hippo-secret`), copy it to every machine, and give it to every rank and the driver with --secret-file or $%s: %w",
		addr, transport.SecretEnv, transport.ErrAuth)
}
