package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/transport"
)

// Pipelines runs pipeline configurations on this machine, starting the other stages as child
// processes (`hippo rank`) and keeping them, and the driver, loaded across runs with the same
// model, dtype, split and link. Calls must not overlap.
type Pipelines struct {
	// Exe is the hippo binary that serves the other stages (default: this executable).
	Exe string

	key    string
	local  *pipeline.Local
	driver *pipeline.Driver

	draftKey string
	draft    engines.Drafter
	draftEng Closer
}

func (p *Pipelines) closeDraft() {
	if p.draftEng != nil {
		p.draftEng.Close()
	}
	p.draft, p.draftEng, p.draftKey = nil, nil, ""
}

// PlanFor builds the plan of a pipeline configuration on checkpoint dir.
func PlanFor(dir string, c Config) (pipeline.Plan, error) {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return pipeline.Plan{}, err
	}
	var split []model.Range
	if c.Hosts != "" {
		h, err := LoadHosts(c.Hosts)
		if err != nil {
			return pipeline.Plan{}, err
		}
		if c.Split == "" {
			c.Split = h.Split
		}
		if c.Split == "" {
			c.Stages = len(h.Stages)
		}
	}
	if c.Split != "" {
		split, err = pipeline.ParseSplit(c.Split, cfg.NumLayers)
	} else {
		stages := c.Stages
		if stages == 0 {
			stages = 2
		}
		// Balance the bytes each stage reads per token, the lm_head included.
		dt, derr := mlx.ParseDType(orDefault(c.Dtype, engines.DefaultDType()))
		if derr != nil {
			return pipeline.Plan{}, derr
		}
		one := *cfg
		one.NumLayers = 1
		perLayer := engines.BytesPerToken(&one, dt)
		one.NumLayers = 0
		head := engines.BytesPerToken(&one, dt)
		layer := make([]int64, cfg.NumLayers)
		for i := range layer {
			layer[i] = perLayer - head
		}
		if stages < 2 || stages > cfg.NumLayers {
			return pipeline.Plan{}, fmt.Errorf("%d stages for %d layers: use 2 to %d stages", stages, cfg.NumLayers, cfg.NumLayers)
		}
		split = engines.BalanceBytes(layer, stages, func(s int) int64 {
			if s == stages-1 {
				return head
			}
			return 0
		})
	}
	if err != nil {
		return pipeline.Plan{}, err
	}
	link, err := transport.ParseProfile(orDefault(c.Link, "loopback"))
	if err != nil {
		return pipeline.Plan{}, err
	}
	tr, err := pipeline.ParseTransport(c.Transport)
	if err != nil {
		return pipeline.Plan{}, err
	}
	if tr == pipeline.TransportRing && link.Name != "loopback" {
		return pipeline.Plan{}, fmt.Errorf("link %s with transport %s: link profiles shape the project's TCP framing only; MLX's ring runs on its own sockets: use --link loopback (or real interfaces)", link.Name, tr)
	}
	fp, err := model.Fingerprint(dir)
	if err != nil {
		return pipeline.Plan{}, err
	}
	dt := c.Dtype
	if dt == "" {
		dt = engines.DefaultDType()
	}
	return pipeline.Plan{Model: dir, DType: dt, Split: split, Link: link, Fingerprint: fp, Layers: cfg.NumLayers,
		Secret: os.Getenv(transport.SecretEnv), Transport: tr}, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Run executes one pipeline configuration on checkpoint dir.
func (p *Pipelines) Run(ctx context.Context, dir string, c Config, onToken func(string)) (Result, error) {
	plan, err := PlanFor(dir, c)
	if err != nil {
		return Result{}, err
	}
	if c.Mode == "pipeline+spec" && plan.Transport == pipeline.TransportRing {
		// The drafter runs MLX on its own thread while the ring waits on another, and this
		// process's MLX scope state is not safe for that overlap.
		return Result{}, fmt.Errorf("pipeline+spec runs over --transport tcp only (its drafter would run MLX beside the ring's thread)")
	}
	key := fmt.Sprintf("%s|%s|%s|%s|%s|%s", dir, plan.DType, pipeline.FormatSplit(plan.Split), plan.Link, c.Hosts, plan.Transport)
	if p.driver == nil || p.key != key {
		p.Close()
		addr := ""
		if c.Hosts != "" {
			h, err := LoadHosts(c.Hosts)
			if err != nil {
				return Result{}, err
			}
			if len(h.Stages) != len(plan.Split) {
				return Result{}, fmt.Errorf("hosts: %s lists %d stages, the split has %d", c.Hosts, len(h.Stages), len(plan.Split))
			}
			if addr = h.Stages[1].Addr; plan.Transport == pipeline.TransportRing {
				addr = "" // each machine's MLX_RANK and MLX_HOSTFILE describe the ring
			}
		} else {
			exe := p.Exe
			if exe == "" {
				if exe, err = os.Executable(); err != nil {
					return Result{}, err
				}
			}
			if p.local, err = pipeline.Launch(ctx, exe, plan); err != nil {
				return Result{}, err
			}
			addr = p.local.Addr
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		p.driver, err = pipeline.OpenDriver(dctx, plan, addr)
		cancel()
		if err != nil {
			logs := ""
			if p.local != nil {
				logs = "\nstage logs:\n" + p.local.Logs()
			}
			p.Close()
			return Result{}, fmt.Errorf("%w%s", err, logs)
		}
		p.key = key
	}
	if p.driver.ReplyTopK, err = ParseReply(c.Reply); err != nil {
		return Result{}, err
	}
	c.Model = dir
	if c.Mode != "pipeline+spec" {
		c.Mode = "pipeline"
	}
	c.Stages = len(plan.Split)
	c.Link = plan.Link.String()
	c.Transport = plan.Transport
	var res Result
	if c.Mode == "pipeline+spec" {
		// The drafter lives on the driver's machine, next to stage 0.
		if p.draft == nil || p.draftKey != c.Drafter+"\x00"+c.Draft {
			p.closeDraft()
			if p.draft, p.draftEng, err = NewDrafter(ctx, c.Drafter, c.Draft, c.Dtype, nil); err != nil {
				return Result{}, err
			}
			p.draftKey = c.Drafter + "\x00" + c.Draft
		}
		res, err = Spec(ctx, p.driver, p.draft, c, onToken)
	} else {
		res, err = Measure(ctx, p.driver, c, onToken)
	}
	if err != nil {
		p.Close() // a failed pipeline is not reused
	}
	return res, err
}

// Close stops the driver, the stages and the drafter.
func (p *Pipelines) Close() error {
	p.closeDraft()
	if p.driver != nil {
		p.driver.Close()
		p.driver = nil
	}
	if p.local != nil {
		p.local.Stop()
		p.local = nil
	}
	p.key = ""
	return nil
}

// Local returns the running child stages (nil before the first run), for tests.
func (p *Pipelines) Local() *pipeline.Local { return p.local }

// ParseReply reads --reply: "" or "token" (0), or "topk:K".
func ParseReply(s string) (int, error) {
	if s == "" || s == "token" {
		return 0, nil
	}
	var k int
	if n, err := fmt.Sscanf(s, "topk:%d", &k); n != 1 || err != nil || k < 1 || k > 65535 {
		return 0, fmt.Errorf("reply %q: use token or topk:K with 1 <= K <= 65535", s)
	}
	return k, nil
}
