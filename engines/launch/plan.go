package launch

import (
	"fmt"
	"os"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/transport"
)

// Plan builds the pipeline plan of c: its split (given, from the hosts file, or balanced by the
// bytes each stage reads per token), link, transport and the checkpoint's fingerprint. Ranks on
// other machines (a hosts file) given no split over TCP get AutoSplit: the driver splits the
// layers by the memory each rank reports (the balanced split then only counts the stages).
func Plan(c Config) (pipeline.Plan, error) {
	dir := c.Model
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return pipeline.Plan{}, err
	}
	var split []model.Range
	auto := false
	if c.Hosts != "" {
		h, err := pipeline.LoadHosts(c.Hosts)
		if err != nil {
			return pipeline.Plan{}, err
		}
		if c.Split == "" {
			c.Split = h.Split
		}
		if c.Split == "" {
			c.Stages = len(h.Stages)
			auto = true
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
		dt, derr := mlx.ParseDType(orDefault(c.DType, engines.DefaultDType()))
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
	if pipeline.OverMLX(tr) && link.Name != "loopback" {
		return pipeline.Plan{}, fmt.Errorf("link %s with transport %s: link profiles shape the project's TCP framing only; MLX's ring runs on its own sockets: use --link loopback (or real interfaces)", link.Name, tr)
	}
	fp, err := model.Fingerprint(dir)
	if err != nil {
		return pipeline.Plan{}, err
	}
	return pipeline.Plan{Model: dir, DType: orDefault(c.DType, engines.DefaultDType()), Split: split, Link: link, Fingerprint: fp,
		Layers: cfg.NumLayers, Secret: os.Getenv(transport.SecretEnv), Transport: tr, Context: c.Context, RAM: c.RAM,
		AutoSplit: auto && !pipeline.OverMLX(tr)}, nil
}

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

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
