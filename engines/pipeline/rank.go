package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/transport"
)

// Plan is what every rank of one pipeline agrees on.
type Plan struct {
	Model  string // checkpoint directory (each machine has its own copy)
	DType  string
	Split  []model.Range
	Link   transport.Profile
	Secret string
	// Fingerprint of the checkpoint, compared in every handshake.
	Fingerprint string
	Layers      int
	// Transport is TransportTCP ("" too) or TransportRing.
	Transport string
}

func (p Plan) identity(stage int) transport.Identity {
	dt, _ := transport.ParseDType(p.DType)
	r := p.Split[stage]
	return transport.Identity{Model: p.Fingerprint, TotalLayers: p.Layers, DType: dt, Stage: stage, Start: r.From, End: r.To}
}

func (p Plan) options(stage int, next bool) transport.Options {
	o := transport.Options{Self: p.identity(stage), Secret: p.Secret, Profile: p.Link, Seed: uint64(stage + 1)}
	if next {
		o.Peer = p.identity(stage + 1)
	}
	return o
}

// Rank serves stage k > 0 of a plan: it accepts the previous stage on listen and, unless it is the
// last stage, forwards to the next one at next.
type Rank struct {
	Plan  Plan
	Stage int
	// Next is the address of stage Stage+1 ("" on the last stage).
	Next string
	// Log receives one line per connection; nil discards.
	Log *log.Logger
}

// Serve loads the stage and answers the previous stage until ctx ends. A connection that ends
// (the driver finished, or died) is logged and the next one is accepted; the caches are reset by
// each request's Reset, so nothing leaks between drivers.
func (r *Rank) Serve(ctx context.Context, ln *transport.Listener) error {
	if r.Stage < 1 || r.Stage >= len(r.Plan.Split) {
		return fmt.Errorf("rank: stage %d: ranks serve stages 1 to %d (stage 0 is the driver)", r.Stage, len(r.Plan.Split)-1)
	}
	logf := func(format string, args ...any) {
		if r.Log != nil {
			r.Log.Printf(format, args...)
		}
	}
	st, err := engines.OpenStage(ctx, engines.StageOptions{Model: r.Plan.Model, DType: r.Plan.DType, Range: r.Plan.Split[r.Stage]})
	if err != nil {
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	defer st.Close()
	logf("stage %d ready: layers [%d,%d) of %s", r.Stage, st.Range().From, st.Range().To, r.Plan.Model)
	for {
		up, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			logf("stage %d: refused a connection: %v", r.Stage, err)
			continue
		}
		var down *transport.Conn
		if !st.Last() {
			if down, err = transport.Dial(ctx, r.Next, r.Plan.options(r.Stage, true)); err != nil {
				up.Close()
				return fmt.Errorf("rank %d: next stage: %w", r.Stage, err)
			}
		}
		err = r.session(ctx, st, up, down)
		up.Close()
		if down != nil {
			down.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		logf("stage %d: connection ended: %v", r.Stage, err)
	}
}

// session answers one upstream connection until it ends.
func (r *Rank) session(ctx context.Context, st *engines.Stage, up, down *transport.Conn) error {
	var fw transport.Forward
	var reply transport.Reply
	for {
		f, err := up.Recv(ctx)
		if err != nil {
			return err
		}
		switch f.Type {
		case transport.TypeBye:
			return io.EOF
		case transport.TypeReset:
			var m transport.Reset
			if err := f.Decode(&m); err != nil {
				return err
			}
			if err := st.Reset(ctx, m.Position, 0, 1, 0); err != nil {
				return r.fail(ctx, up, f, err)
			}
			if down != nil {
				if err := down.Send(ctx, f.Session, f.Seq, &m); err != nil {
					return err
				}
			}
		case transport.TypeForward:
			if err := f.Decode(&fw); err != nil {
				return err
			}
			if err := r.forward(ctx, st, down, f, &fw, &reply); err != nil {
				var pe *transport.Error
				if errors.As(err, &pe) {
					return err
				}
				return r.fail(ctx, up, f, err)
			}
			if err := up.Send(ctx, f.Session, f.Seq, &reply); err != nil {
				return err
			}
		default:
			return fmt.Errorf("rank %d: unexpected %v frame", r.Stage, f.Type)
		}
	}
}

func (r *Rank) forward(ctx context.Context, st *engines.Stage, down *transport.Conn, f transport.Frame, fw *transport.Forward, reply *transport.Reply) error {
	if len(fw.Shape) != 2 || fw.Shape[0] != fw.Tokens || fw.Shape[1] != st.Config().HiddenSize {
		return fmt.Errorf("rank %d: hidden state of shape %v; want [%d %d]", r.Stage, fw.Shape, fw.Tokens, st.Config().HiddenSize)
	}
	reply.Tokens, reply.TopK, reply.Timings = reply.Tokens[:0], reply.TopK[:0], reply.Timings[:0]
	if st.Last() && fw.Outputs > 1 {
		ids, took, err := st.Verify(ctx, engines.Activation{Hidden: fw.Data, Len: fw.Tokens}, fw.Outputs)
		if err != nil {
			return err
		}
		for _, id := range ids {
			reply.Tokens = append(reply.Tokens, int32(id))
		}
		reply.AddTiming(r.Stage, took)
		return nil
	}
	res, err := st.Forward(ctx, engines.Activation{Hidden: fw.Data, Len: fw.Tokens}, true, fw.TopK)
	if err != nil {
		return err
	}
	if st.Last() {
		reply.Tokens = append(reply.Tokens, int32(res.Token))
		for _, c := range res.TopK {
			reply.TopK = append(reply.TopK, transport.Candidate{ID: int32(c.ID), Logit: c.LogProb})
		}
	} else {
		next := transport.Forward{Position: fw.Position, Tokens: fw.Tokens, TopK: fw.TopK, Outputs: fw.Outputs, DType: fw.DType,
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
		return nil
	}
	reply.AddTiming(r.Stage, res.Forward)
	return nil
}

// fail reports err to the previous stage, so the driver's error names where it happened.
func (r *Rank) fail(ctx context.Context, up *transport.Conn, f transport.Frame, err error) error {
	up.Send(ctx, f.Session, f.Seq, &transport.Error{Message: fmt.Sprintf("stage %d: %v", r.Stage, err)})
	return err
}

// ListenOptions are the transport options stage k listens with.
func ListenOptions(p Plan, k int) transport.Options { return p.options(k, false) }
