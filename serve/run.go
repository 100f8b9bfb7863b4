package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/synth"
)

// RunOptions are the environment of Run.
type RunOptions struct {
	// ModelsDir and TokenizersDir are where synth:PRESET models are kept and made from.
	ModelsDir, TokenizersDir string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registry receives the metrics; nil makes one with the Go and process collectors.
	Registry *prometheus.Registry
	// Ready, when set, is called with the listening address once connections are accepted.
	Ready func(addr string)
	// Exe is the hippo binary that serves local pipeline stages (default: this executable).
	Exe string
	// Grace is how long in-flight requests may finish after ctx ends (default 10 s); then their
	// generations are cancelled.
	Grace time.Duration
}

// Run loads c's models, serves them until ctx ends, then shuts down gracefully.
func Run(ctx context.Context, c Config, o RunOptions) error {
	if err := c.Validate(); err != nil {
		return err
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	reg := o.Registry
	if reg == nil {
		reg = NewRegistry()
	}
	var models []Model
	var open []launch.Generator
	defer func() {
		for _, g := range open {
			g.Close()
		}
	}()
	for _, mc := range c.Models {
		lc := mc.Launch(mc.Model, mc.Draft, int64(c.RAM))
		// Check memory before synthesizing a preset: writing a checkpoint that cannot run wastes
		// minutes and gigabytes.
		if err := Servable(int64(c.RAM), lc.Context)(mc.bench()); err != nil {
			return fmt.Errorf("model %s: %w", mc.ID, err)
		}
		var err error
		if lc.Model, err = synth.Resolve(ctx, mc.Model, o.ModelsDir, o.TokenizersDir); err != nil {
			return err
		}
		if lc.Draft != "" {
			if lc.Draft, err = synth.Resolve(ctx, mc.Draft, o.ModelsDir, o.TokenizersDir); err != nil {
				return err
			}
		}
		lc.Exe = o.Exe
		lc.MaxBatch = c.MaxBatch
		if lc.MaxBatch == 0 {
			lc.MaxBatch = engines.DefaultMaxBatch
		}
		start := time.Now()
		g, err := launch.Open(ctx, lc)
		if err != nil {
			return fmt.Errorf("model %s: %w", mc.ID, err)
		}
		open = append(open, g)
		m := GeneratorModel(mc.ID, g)
		models = append(models, m)
		info := g.Info()
		log.Info("model loaded", "id", mc.ID, "dir", lc.Model, "mode", info.Mode, "dtype", info.DType, "context", m.Context,
			"max_batch", info.MaxBatch, "stages", info.Stages, "link", info.Link, "drafter", mc.Drafter, "draft_tokens", info.DraftTokens,
			"weights", engines.FormatBytes(info.WeightBytes), "took", time.Since(start).Round(time.Millisecond))
	}
	s, err := New(Options{Models: models, APIKeys: c.APIKeys, MaxQueue: c.MaxQueue, Timeout: time.Duration(c.Timeout),
		WriteTimeout: time.Duration(c.WriteTimeout), MaxBody: int64(c.MaxBody), Registry: reg, Logger: log})
	if err != nil {
		return err
	}
	listen := c.Listen
	if listen == "" {
		listen = DefaultListen
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another server there? use --listen)", listen, err)
	}
	// Requests derive from base, so cancelling it stops every generation at shutdown.
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("serving", "url", "http://"+addr, "models", s.modelIDs(), "auth", len(c.APIKeys) > 0)
	if o.Ready != nil {
		o.Ready(addr)
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	grace := o.Grace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Cancel the generations still running, then wait for their handlers to return before the
		// engines are closed.
		cancelBase()
		wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer wcancel()
		if err := srv.Shutdown(wctx); err != nil {
			srv.Close()
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NewRegistry is a registry with Hippo's usual process-level collectors (Go runtime, process).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
