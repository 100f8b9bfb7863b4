package pipeline

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/tokenizer"
	"github.com/hippo-bench/hippo/transport"
)

// SampleTopK is how many candidates the last stage returns when the driver samples with a
// temperature: the driver then draws from them (the tail beyond them is dropped).
const SampleTopK = 64

// Driver is stage 0: it holds the first layer range, embeds tokens, runs the decode loop and
// talks to stage 1. Generate calls must not overlap.
type Driver struct {
	plan    Plan
	first   *engines.Stage
	tok     *tokenizer.Tokenizer
	next    link
	session uint64
	hidden  int
	dtype   transport.DType
	// ReplyTopK, when > 0, asks the last stage for its top-k candidates on every step and samples
	// at the driver (also for greedy decoding); 0 lets the last stage sample greedy steps itself.
	ReplyTopK int
	// ProposalTopK bounds, in sampled pipeline+spec with a drafter whose drafts are drawn
	// independently of each other (DFlash), each draft's distribution to its most likely tokens:
	// the draft is drawn from that truncated distribution (by a DFlash drafter on its device,
	// which then reads back only the truncated distribution; otherwise redrawn by the driver)
	// and only it is sent, so a step carries K x ProposalTopK entries instead of K whole
	// vocabularies (the rejection rule stays exact for the distribution actually drawn from).
	// 0 means SampleTopK; below 0 sends whole distributions.
	ProposalTopK int
}

// OpenDriver loads stage 0 of plan and connects to stage 1 at addr, retrying until ctx ends (so
// ranks may start after the driver). With plan.Transport mlx-ring, addr is MLX's hostfile ("" for
// $MLX_HOSTFILE) and the driver joins the ring as rank 0.
//
// Over TCP, the driver then tells every rank the split (a rank started without one loads its
// layers only then). With plan.AutoSplit it first asks the ranks how much memory each can offer
// and splits the layers in proportion (see PlanSplit); Split returns the split it chose.
func OpenDriver(ctx context.Context, plan Plan, addr string) (*Driver, error) {
	tok, err := tokenizer.Load(plan.Model)
	if err != nil {
		return nil, err
	}
	if !overMLX(plan.Transport) {
		if err := CheckExposure(addr, plan.Secret); err != nil {
			return nil, err
		}
	} else if plan.AutoSplit {
		return nil, fmt.Errorf("pipeline: %s cannot plan the split from the ranks' memory (its ranks load their layers before the ring is joined): give --split", plan.Transport)
	}
	cfg, err := model.ReadConfig(plan.Model)
	if err != nil {
		return nil, err
	}
	start, err := startLink(plan, addr)
	if err != nil {
		return nil, err
	}
	var conn *transport.Conn
	if start.ring == nil {
		if conn, err = transport.Dial(ctx, addr, plan.options(0, true)); err != nil {
			return nil, fmt.Errorf("pipeline: stage 1: %w", err)
		}
		if plan.AutoSplit {
			split, err := PlanSplit(ctx, conn, plan, cfg)
			if err != nil {
				conn.Close()
				return nil, err
			}
			plan.Split, plan.AutoSplit = split, false
		}
	}
	if plan.Context > 0 || plan.RAM > 0 {
		ctxLen := plan.Context
		if ctxLen == 0 {
			ctxLen = (&Rank{Plan: plan}).contextCap(cfg)
		}
		if err := checkStageMemory(cfg, plan.DType, plan.Split[0], ctxLen, plan.RAM); err != nil {
			start.abandon()
			if conn != nil {
				conn.Close()
			}
			return nil, fmt.Errorf("pipeline: stage 0: %w", err)
		}
	}
	// Over MLX's ring, stage 0's hidden states stay on the device until MLX sends them.
	first, err := engines.OpenStage(ctx, engines.StageOptions{Model: plan.Model, DType: plan.DType, Range: plan.Split[0], DeviceHidden: overMLX(plan.Transport)})
	if err != nil {
		start.abandon()
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	var next link = conn
	if conn != nil {
		split := make([]transport.Range, len(plan.Split))
		for i, r := range plan.Split {
			split[i] = transport.Range{From: r.From, To: r.To}
		}
		if err := conn.Call(ctx, 0, 2, &transport.Assign{Split: split}, &transport.Reply{}); err != nil {
			conn.Close()
			first.Close()
			return nil, fmt.Errorf("pipeline: split %s: %w", FormatSplit(plan.Split), err)
		}
	} else if next, err = start.open(ctx, first); err != nil {
		first.Close()
		return nil, fmt.Errorf("pipeline: stage 1: %w", err)
	}
	dt, _ := transport.ParseDType(first.DType().String())
	return &Driver{plan: plan, first: first, tok: tok, next: next, hidden: first.Config().HiddenSize, dtype: dt,
		session: uint64(time.Now().UnixNano())}, nil
}

// Split is the pipeline's layer ranges, as given or as planned from the ranks' memory.
func (d *Driver) Split() []model.Range { return d.plan.Split }

// PlanSplit asks the ranks behind conn (stage 1, which relays to the others) for the memory each
// can offer, and splits plan's model over stage 0 and them in proportion to it
// (engines.SplitByMemory), with a KV cache for the stages' context cap. len(plan.Split) says how
// many stages to expect. A rank that answers for the wrong stages, reports no memory or more
// than any machine has, or offers too little for its share, is refused with an error that names
// it.
func PlanSplit(ctx context.Context, conn *transport.Conn, plan Plan, cfg *model.Config) ([]model.Range, error) {
	stages := len(plan.Split)
	var m transport.Memory
	if err := conn.Call(ctx, 0, 1, &transport.Survey{}, &m); err != nil {
		return nil, fmt.Errorf("pipeline: ask the ranks for their free memory: %w", err)
	}
	free := make([]int64, stages)
	if free[0] = plan.FreeMemory; free[0] <= 0 {
		var err error
		if free[0], err = engines.AvailableRAM(); err != nil {
			return nil, fmt.Errorf("pipeline: cannot tell this machine's free memory to plan the split (%v): give --split", err)
		}
	}
	if len(m.Stages) != stages-1 {
		return nil, fmt.Errorf("pipeline: %d ranks answered the memory survey, the pipeline has %d stages after the driver: check each rank's --stage and --next against the hosts file: %w",
			len(m.Stages), stages-1, transport.ErrRange)
	}
	for _, s := range m.Stages {
		switch {
		case s.Stage < 1 || s.Stage >= stages:
			return nil, fmt.Errorf("pipeline: a rank answered the memory survey as stage %d, the pipeline has stages 1 to %d: check its --stage: %w", s.Stage, stages-1, transport.ErrRange)
		case free[s.Stage] != 0:
			return nil, fmt.Errorf("pipeline: two ranks answered the memory survey as stage %d: check their --stage: %w", s.Stage, transport.ErrRange)
		case s.Free == 0:
			return nil, fmt.Errorf("pipeline: stage %d reports no free memory: free memory on that machine (or check its --report-memory), or give --split: %w", s.Stage, engines.ErrMemory)
		case s.Free > transport.MaxFreeMemory:
			return nil, fmt.Errorf("pipeline: stage %d reports %s free, more than any machine has (limit %s): the rank is broken or not to be trusted; check its build and --report-memory, or give --split: %w",
				s.Stage, engines.FormatBytes(s.Free), engines.FormatBytes(transport.MaxFreeMemory), transport.ErrBadFrame)
		}
		free[s.Stage] = s.Free
	}
	dt, err := mlx.ParseDType(plan.DType)
	if err != nil {
		return nil, err
	}
	split, err := engines.SplitByMemory(cfg, dt, (&Rank{Plan: plan}).contextCap(cfg), free)
	if err != nil {
		return nil, fmt.Errorf("pipeline: split by free memory (%s): %w", formatFree(free), err)
	}
	return split, nil
}

func formatFree(free []int64) string {
	parts := make([]string, len(free))
	for i, f := range free {
		parts[i] = fmt.Sprintf("stage %d %s", i, engines.FormatBytes(f))
	}
	return strings.Join(parts, ", ")
}

// Alive checks that the connection to stage 1 still works (a Ping over TCP; MLX's backends
// cannot tell, so they always pass). A rank closes a session idle for its --idle-timeout, so a
// driver kept between runs should check before reusing it.
func (d *Driver) Alive(ctx context.Context) error {
	c, ok := d.next.(*transport.Conn)
	if !ok {
		return nil
	}
	_, err := c.Ping(ctx)
	return err
}

// Tokenizer is the model's tokenizer.
func (d *Driver) Tokenizer() *tokenizer.Tokenizer { return d.tok }

// Close says goodbye to stage 1 and frees stage 0.
func (d *Driver) Close() {
	d.next.Close()
	d.first.Close()
}

// Generate runs r through the pipeline, with the same prefill chunks and decode steps as the
// standalone engine, so greedy output is identical to it token for token.
func (d *Driver) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	var st engines.Stats
	if err := engines.CheckRequest(r); err != nil {
		return st, err
	}
	eos := map[int]bool{}
	if !r.IgnoreEOS {
		for _, id := range d.tok.EOS() {
			eos[id] = true
		}
	}
	d.session++
	var seq uint64
	st.PromptTokens = len(r.Tokens)
	if err := d.first.Reset(ctx, 0, 0, 1, 0); err != nil {
		return st, err
	}
	if err := d.next.Send(ctx, d.session, seq, &transport.Reset{Position: 0}); err != nil {
		return st, err
	}
	rng := rand.New(rand.NewPCG(r.Seed, 0x9E3779B97F4A7C15))
	topK := d.ReplyTopK
	if r.Temperature > 0 && topK == 0 {
		topK = SampleTopK
	}
	start := time.Now()
	pos := 0
	// step sends tokens through every stage and returns the last stage's answer.
	step := func(tokens []int) (transport.Reply, engines.Step, error) {
		var s engines.Step
		res, err := d.first.Forward(ctx, engines.Activation{Tokens: tokens}, false, 0)
		if err != nil {
			return transport.Reply{}, s, err
		}
		seq++
		fw := transport.Forward{Position: pos, Tokens: len(tokens), TopK: topK, DType: d.dtype,
			Shape: []int{len(tokens), d.hidden}}
		var reply transport.Reply
		t0 := time.Now()
		if err := d.call(ctx, seq, &fw, res.Hidden, &reply); err != nil {
			return reply, s, fmt.Errorf("pipeline: %w", err)
		}
		rtt := time.Since(t0)
		pos += len(tokens)
		s.StageForward = []time.Duration{res.Forward}
		s.Forward = res.Forward
		s.Forward += d.timings(&s, rtt, reply.Timings)
		s.Bytes = int64(len(tokens)*d.hidden*d.dtype.Size()) + int64(8*len(reply.TopK)+4*len(reply.Tokens)+18*len(reply.Timings))
		return reply, s, nil
	}
	// Prefill: all prompt tokens but the last, in chunks, then the last one alone.
	toks := r.Tokens
	for len(toks) > 1 {
		n := min(engines.PrefillChunk, len(toks)-1)
		if _, _, err := step(toks[:n]); err != nil {
			return st, err
		}
		toks = toks[n:]
	}
	next := toks
	for {
		reply, s, err := step(next)
		if err != nil {
			return st, err
		}
		t0 := time.Now()
		id, err := d.pick(reply, r, rng)
		if err != nil {
			return st, err
		}
		s.Sample = time.Since(t0)
		if len(st.Tokens) == 0 {
			st.TTFT = time.Since(start)
			st.Prefill = st.TTFT
			s = engines.Step{}
		} else {
			st.Steps = append(st.Steps, s)
		}
		st.Tokens = append(st.Tokens, id)
		st.Decode = time.Since(start) - st.TTFT
		if err := emit(engines.Token{ID: id, Step: s}); err != nil {
			return st, err
		}
		if eos[id] || len(st.Tokens) >= r.MaxTokens {
			st.FinishReason = "length"
			if eos[id] {
				st.FinishReason = "stop"
			}
			// The driver's own peak; each rank's is its own process's.
			st.PeakMemory = d.first.PeakMemory()
			return st, nil
		}
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("%w: %w", engines.ErrCanceled, err)
		}
		next = []int{id}
	}
}

// call sends stage 0's output h on through the pipeline and waits for the reply: as a device
// array over MLX's ring (no copy through the host), as bytes otherwise. It frees h's array.
func (d *Driver) call(ctx context.Context, seq uint64, fw *transport.Forward, h engines.Activation, reply *transport.Reply) error {
	if h.Array.Valid() {
		rl, ok := d.next.(*ringLink)
		if !ok {
			d.first.Free(h.Array)
			return fmt.Errorf("pipeline: stage 0 kept its hidden state on the device for a link that sends bytes")
		}
		return rl.CallArray(ctx, seq, fw, h.Array, reply)
	}
	fw.Data = h.Hidden
	return d.next.Call(ctx, d.session, seq, fw, reply)
}

// timings fills s's per-stage forward times (after stage 0's, already there), its time on the
// wire, and, over the project's TCP framing, the time of each hop, from the round trip rtt and
// the remote stages' timings. It returns the remote stages' forward time.
func (d *Driver) timings(s *engines.Step, rtt time.Duration, reported []transport.StageTiming) time.Duration {
	timings := append([]transport.StageTiming(nil), reported...)
	sort.Slice(timings, func(i, j int) bool { return timings[i].Stage < timings[j].Stage })
	var remote, hops time.Duration
	for _, t := range timings {
		s.StageForward = append(s.StageForward, t.Forward)
		remote += t.Forward
		hops += t.Network
	}
	s.Network = max(rtt-remote, 0)
	if d.plan.Transport != TransportRing { // the ring's stages report no hop times
		s.Hops = append(s.Hops[:0], max(s.Network-hops, 0))
		for _, t := range timings[:max(len(timings)-1, 0)] {
			s.Hops = append(s.Hops, t.Network)
		}
	}
	return remote
}

// pick chooses the next token: the last stage's greedy choice, or a draw from its top candidates
// at the request's temperature and top-p.
func (d *Driver) pick(reply transport.Reply, r engines.Request, rng *rand.Rand) (int, error) {
	if r.Temperature == 0 && len(reply.TopK) > 0 {
		return int(reply.TopK[0].ID), nil // candidates come most likely first
	}
	if r.Temperature == 0 {
		if len(reply.Tokens) == 0 {
			return 0, fmt.Errorf("pipeline: the last stage replied without a token")
		}
		return int(reply.Tokens[len(reply.Tokens)-1]), nil
	}
	c := reply.TopK
	if len(c) == 0 {
		return 0, fmt.Errorf("pipeline: the last stage replied without candidates")
	}
	w := make([]float64, len(c))
	var total float64
	for i, cand := range c {
		w[i] = math.Exp(float64(cand.Logit-c[0].Logit) / r.Temperature)
		total += w[i]
	}
	if r.TopP > 0 && r.TopP < 1 {
		var mass float64
		for i := range w {
			if mass >= r.TopP*total {
				w[i] = 0
			}
			mass += w[i]
		}
	}
	var sum float64
	for _, x := range w {
		sum += x
	}
	u := rng.Float64() * sum
	for i, x := range w {
		if u < x {
			return int(c[i].ID), nil
		}
		u -= x
	}
	return int(c[len(c)-1].ID), nil
}
