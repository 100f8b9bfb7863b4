package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/serve"
)

// apiKeyEnv holds the server's accepted API keys, comma-separated, when --api-key-file is not given.
const apiKeyEnv = "HIPPO_API_KEY"

// openAPIExposure refuses an API without keys on an address reachable beyond this machine.
func openAPIExposure(listen string) error {
	if err := pipeline.CheckExposure(listen, ""); err != nil {
		return fmt.Errorf("--listen %s without an API key would let anyone on the network use the server: set $%s or --api-key-file, or listen on 127.0.0.1", listen, apiKeyEnv)
	}
	return nil
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve models through an OpenAI-compatible API, with /metrics and a web chat",
		UsageText: "hippo serve --model DIR|synth:PRESET|smollm2-135m|FILE.gguf [--dtype f32|bf16|f16] [--listen ADDR] [--api-key-file FILE] [--max-batch N] [--max-queue N] [--timeout D] [--write-timeout D] [--max-body SIZE]\n" +
			"hippo serve --model DIR --mode pipeline|spec|pipeline+spec [the mode flags of hippo run: --stages, --split, --link, --hosts, --drafter, --draft, --draft-tokens ...]\n" +
			"hippo serve --best results/<sweep>/<stamp>   (the fastest servable configuration of a sweep)\n" +
			"hippo serve --config hippo.yaml              (several models; flags override the file)",
		Flags: append([]cli.Flag{
			wholeListFlag("model", "checkpoint directory, synth:PRESET, smollm2-135m or FILE.gguf (repeat to serve several; a value is one path, commas included)"),
			&cli.StringFlag{Name: "best", Usage: "serve the configuration with the best mean decode tok/s in this sweep output directory"},
			&cli.StringFlag{Name: "config", Usage: "hippo.yaml with listen, api_keys, max_batch, max_queue, timeout, write_timeout, max_body, ram and models"},
			&cli.StringFlag{Name: "dtype", Usage: "compute dtype: f32, bf16 or f16 (default: bf16 on a GPU, f32 on the CPU backend)"},
			&cli.StringFlag{Name: "listen", Value: serve.DefaultListen, Usage: "address to listen on"},
			&cli.StringFlag{Name: "api-key-file", Usage: "file with the accepted bearer keys, one a line (default: $" + apiKeyEnv + ", comma-separated); none leaves the API open, allowed on loopback only"},
			argvSecretFlag("api-key", apiKeyEnv, "api-key-file"),
			&cli.IntFlag{Name: "max-queue", Value: serve.DefaultMaxQueue, Usage: "requests that may wait for a model before the server answers 429"},
			&cli.DurationFlag{Name: "timeout", Value: serve.DefaultTimeout, Usage: "limit on one request, queueing included"},
			&cli.IntFlag{Name: "max-batch", Value: engines.DefaultMaxBatch, Usage: "generations a model runs at once (continuous batching; the memory guard may lower it); 1 serves one at a time"},
			&cli.DurationFlag{Name: "write-timeout", Value: serve.DefaultWriteTimeout, Usage: "drop a streaming client that reads nothing for this long and free its generation"},
			&cli.StringFlag{Name: "max-body", Value: "1MiB", Usage: "largest request body"},
			&cli.IntFlag{Name: "context", Value: serve.DefaultContext, Usage: "longest prompt + completion served (the memory guard plans for it)"},
			&cli.StringFlag{Name: "ram", Usage: "plan for this much RAM instead of the detected amount (e.g. 16GB)"},
		}, modeFlags()...),
		Action: func(c *cli.Context) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if err := usePipelineSecret(c); err != nil {
				return err
			}
			cfg, err := serveConfig(c, log)
			if err != nil {
				return err
			}
			return serve.Run(c.Context, cfg, serve.RunOptions{ModelsDir: modelsDir(), TokenizersDir: tokenizersDir(), Logger: log})
		},
	}
}

// serveConfig merges --config with the flags given explicitly; --model and --best replace the
// file's models.
func serveConfig(c *cli.Context, log *slog.Logger) (serve.Config, error) {
	var cfg serve.Config
	if path := c.String("config"); path != "" {
		var err error
		if cfg, err = serve.ReadConfig(path); err != nil {
			return cfg, err
		}
	}
	set := func(name string) bool { return c.IsSet(name) || c.String("config") == "" }
	if set("listen") {
		cfg.Listen = c.String("listen")
	}
	if err := refuseArgvSecret(c, "api-key", apiKeyEnv, "api-key-file"); err != nil {
		return cfg, err
	}
	switch {
	case c.String("api-key-file") != "":
		keys, err := readSecretFile("api-key-file", c.String("api-key-file"))
		if err != nil {
			return cfg, err
		}
		cfg.APIKeys = nil
		for _, k := range strings.Split(keys, "\n") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.APIKeys = append(cfg.APIKeys, k)
			}
		}
	case os.Getenv(apiKeyEnv) != "":
		cfg.APIKeys = nil
		for _, k := range strings.Split(os.Getenv(apiKeyEnv), ",") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.APIKeys = append(cfg.APIKeys, k)
			}
		}
	}
	if len(cfg.APIKeys) == 0 && cfg.Listen != "" {
		if err := openAPIExposure(cfg.Listen); err != nil {
			return cfg, err
		}
	}
	if set("max-queue") {
		cfg.MaxQueue = c.Int("max-queue")
	}
	if set("timeout") {
		cfg.Timeout = serve.Duration(c.Duration("timeout"))
	}
	if set("max-batch") {
		cfg.MaxBatch = c.Int("max-batch")
	}
	if set("write-timeout") {
		cfg.WriteTimeout = serve.Duration(c.Duration("write-timeout"))
	}
	if set("max-body") {
		n, err := engines.ParseBytes(c.String("max-body"))
		if err != nil {
			return cfg, fmt.Errorf("--max-body: %w", err)
		}
		cfg.MaxBody = serve.ByteSize(n)
	}
	if c.IsSet("ram") {
		n, err := engines.ParseBytes(c.String("ram"))
		if err != nil {
			return cfg, fmt.Errorf("--ram: %w", err)
		}
		cfg.RAM = serve.ByteSize(n)
	}
	models := wholeValues(c, "model")
	best := c.String("best")
	switch {
	case best != "" && len(models) > 0:
		return cfg, errors.New("--best and --model both choose the model: give one")
	case best != "":
		choice, err := serve.ReadBest(best, serve.Servable(int64(cfg.RAM), c.Int("context")))
		if err != nil {
			return cfg, err
		}
		log.Info("best configuration", "choice", choice.Describe())
		m := serve.FromSweep(choice.Best.Config, c.Int("context"))
		if c.IsSet("dtype") {
			m.DType = c.String("dtype")
		}
		cfg.Models = []serve.ModelConfig{m}
	case len(models) > 0:
		cfg.Models = nil
		for _, name := range models {
			m := serve.ModelConfig{Model: name, DType: c.String("dtype"), Context: c.Int("context"), Mode: c.String("mode"),
				Stages: c.Int("stages"), Split: c.String("split"), Link: c.String("link"), Transport: c.String("transport"),
				Reply: c.String("reply"), Hosts: c.String("hosts")}
			if strings.HasSuffix(m.Mode, "spec") {
				m.Drafter, m.Draft, m.DraftTokens = c.String("drafter"), c.String("draft"), c.Int("draft-tokens")
			}
			cfg.Models = append(cfg.Models, m)
		}
	case len(cfg.Models) == 0:
		return cfg, errors.New("no model: give --model DIR|synth:PRESET|smollm2-135m|FILE.gguf, --best results/<sweep>/<stamp> or --config hippo.yaml")
	default:
		for i := range cfg.Models {
			if c.IsSet("dtype") {
				cfg.Models[i].DType = c.String("dtype")
			}
			if c.IsSet("context") {
				cfg.Models[i].Context = c.Int("context")
			}
		}
	}
	return cfg, cfg.Validate()
}
