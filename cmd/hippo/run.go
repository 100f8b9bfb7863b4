package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/transport"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// defaultPrompt is the prompt of `hippo run` without --prompt. Its words are common enough that
// every synthetic preset takes their ids, deep-narrow too, whose 4,096-id vocabulary keeps only
// the lowest ids of Qwen3's tokenizer (TestDefaultPromptFitsEveryPreset).
const defaultPrompt = "The best way to learn is"

// checkPrompt refuses a prompt whose token ids (in the chat template with chat) fall beyond the
// model's vocabulary of vocab, before anything runs. The synthetic deep-narrow keeps only the
// lowest 4,096 ids of Qwen3's tokenizer, so most text does not fit it.
func checkPrompt(tok *tokenizer.Tokenizer, prompt string, chat bool, vocab int) error {
	ids, err := engines.Prompt(tok, prompt, chat)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if id < vocab {
			continue
		}
		hint := "give a --prompt of more common words, whose ids are lower (the default prompt fits every preset)"
		if chat {
			hint = "drop --chat (the chat template's own tokens have high ids) and use common words (the default prompt fits every preset)"
		}
		return fmt.Errorf("--prompt %q has token id %d, beyond this checkpoint's vocabulary of %d ids (smaller than its tokenizer's): %s", prompt, id, vocab, hint)
	}
	return nil
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "generate from a model once and report its timing",
		UsageText: "hippo run --model DIR|synth:PRESET|smollm2-135m|FILE.gguf --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--seed S] [--chat] [--ignore-eos] [--dtype f32|bf16|f16] [--ram SIZE] [--json]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "checkpoint directory, synth:PRESET, a real model (smollm2-135m) or a .gguf file"},
			&cli.StringFlag{Name: "prompt", Value: defaultPrompt, Usage: "prompt text"},
			&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "tokens to generate at most"},
			&cli.Float64Flag{Name: "temperature", Usage: "sampling temperature (0 = greedy)"},
			&cli.Float64Flag{Name: "top-p", Value: 1, Usage: "nucleus sampling mass"},
			&cli.Uint64Flag{Name: "seed", Usage: "sampling seed"},
			&cli.BoolFlag{Name: "chat", Usage: "wrap the prompt in the model's chat template"},
			&cli.BoolFlag{Name: "ignore-eos", Usage: "generate exactly --max-tokens tokens"},
			&cli.StringFlag{Name: "dtype", Usage: "compute dtype: f32, bf16 or f16 (default: bf16 on a GPU, f32 on the CPU backend)"},
			&cli.StringFlag{Name: "ram", Usage: "plan for this much RAM instead of the detected amount (e.g. 16GB)"},
			&cli.IntFlag{Name: "context", Usage: "context length the memory guard plans for (default: prompt + max tokens)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of text"},
			&cli.Float64Flag{Name: "draft-confidence", Usage: "spec, pipeline+spec with --drafter dflash: cut each greedy draft where the drafter's joint probability of its drafts falls below this (0: whole blocks)"},
		}, modeFlags()...),
		Action: func(c *cli.Context) error {
			if err := usePipelineSecret(c); err != nil {
				return err
			}
			cfg := bench.Config{
				Model: c.String("model"), Prompt: c.String("prompt"),
				Chat: c.Bool("chat"), MaxTokens: c.Int("max-tokens"), IgnoreEOS: c.Bool("ignore-eos"),
				Temperature: c.Float64("temperature"), TopP: c.Float64("top-p"), Seed: c.Uint64("seed"),
				Dtype: c.String("dtype"), Mode: c.String("mode"), Stages: c.Int("stages"), Split: c.String("split"),
				Link: c.String("link"), Transport: c.String("transport"), Hosts: c.String("hosts"), Reply: c.String("reply"),
				Drafter: c.String("drafter"), Draft: c.String("draft"), DraftTokens: c.Int("draft-tokens"),
				DraftConfidence: c.Float64("draft-confidence"),
			}
			if !slices.Contains(launch.Modes, cfg.Mode) {
				return fmt.Errorf("--mode %q: use %s", cfg.Mode, strings.Join(launch.Modes, ", "))
			}
			if strings.HasSuffix(cfg.Mode, "spec") && cfg.DraftTokens < 1 {
				return fmt.Errorf("--draft-tokens %d: must be at least 1", cfg.DraftTokens)
			}
			if cfg.MaxTokens < 1 {
				return fmt.Errorf("--max-tokens %d: must be at least 1", cfg.MaxTokens)
			}
			var ram int64
			if s := c.String("ram"); s != "" {
				var err error
				if ram, err = engines.ParseBytes(s); err != nil {
					return fmt.Errorf("--ram: %w", err)
				}
			}
			dir, err := synth.Resolve(c.Context, cfg.Model, modelsDir(), tokenizersDir())
			if err != nil {
				return err
			}
			cfg.Model = dir
			ctxLen := c.Int("context")
			if ctxLen == 0 {
				ctxLen = len(cfg.Prompt) + cfg.MaxTokens + 64 // bytes bound tokens from above
			}
			asJSON := c.Bool("json")
			var onToken func(string)
			if !asJSON {
				onToken = func(s string) { fmt.Print(s) }
			}
			if cfg.Draft != "" {
				if cfg.Draft, err = resolveModel(c.Context, cfg.Draft); err != nil {
					return err
				}
			}
			lc := cfg.Launch()
			lc.RAM, lc.Context = ram, ctxLen
			g, err := launch.Open(c.Context, lc)
			if err != nil {
				return err
			}
			defer g.Close()
			mc, err := model.ReadConfig(cfg.Model)
			if err != nil {
				return err
			}
			if err := checkPrompt(g.Tokenizer(), cfg.Prompt, cfg.Chat, mc.VocabSize); err != nil {
				return err
			}
			res, err := bench.Run(c.Context, g, cfg, onToken)
			if err != nil {
				return err
			}
			dtype := g.Info().DType
			if dev, err := engines.Device(); err == nil {
				res.Device = dev.String()
			} else {
				res.Device = "unknown (" + err.Error() + ")"
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				return enc.Encode(res)
			}
			fmt.Println()
			fmt.Printf("\n%s, %s, %s compute on %s: %d prompt tokens, %d generated (%s)\n", res.Model, res.Mode, dtype, res.Device, res.PromptTokens, len(res.Tokens), res.FinishReason)
			fmt.Printf("prompt: %.1f tok/s   decode: %.1f tok/s   TTFT: %.1f ms   peak memory: %s\n",
				res.PrefillTokS, res.DecodeTokS, res.TTFTMS, engines.FormatBytes(res.PeakMemoryBytes))
			if a := res.Acceptance; a != nil {
				fmt.Printf("spec: drafted %d, accepted %d (rate %.2f, %.2f per step), by position %.2f\n", a.Drafted, a.Accepted, a.Rate, a.MeanAccepted, a.ByPosition)
				if a.NoDraftSteps > 0 {
					fmt.Printf("spec: %d of %d steps proposed no draft\n", a.NoDraftSteps, len(res.Steps))
				}
			}
			if strings.HasPrefix(res.Mode, "pipeline") && len(res.Steps) > 0 {
				var fwd, net, bytes float64
				var hops []float64
				for _, s := range res.Steps {
					fwd += s.ForwardMS
					net += s.NetworkMS
					bytes += float64(s.Bytes)
					for k, h := range s.HopNetworkMS {
						for len(hops) <= k {
							hops = append(hops, 0)
						}
						hops[k] += h
					}
				}
				n := float64(len(res.Steps))
				fmt.Printf("pipeline: %d stages (split %s) over %s: per step forward %.2f ms, network %.2f ms, %.0f bytes\n", res.Stages, res.Split, res.Link, fwd/n, net/n, bytes/n)
				if len(hops) > 1 {
					fmt.Print("network per hop:")
					for k, h := range hops {
						fmt.Printf("  %d-%d %.2f ms", k, k+1, h/n)
					}
					fmt.Println()
				}
			}
			return nil
		},
	}
}

// modeFlags are the flags that choose how a model runs, shared by run and serve.
func modeFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "mode", Value: "standalone", Usage: "standalone, pipeline, spec or pipeline+spec (speculation across the pipeline)"},
		&cli.StringFlag{Name: "drafter", Value: "model", Usage: "spec: model, lookup or dflash"},
		&cli.StringFlag{Name: "draft", Usage: "spec: draft checkpoint for --drafter model or dflash (DIR, synth:PRESET, smollm2-135m or FILE.gguf)"},
		&cli.IntFlag{Name: "draft-tokens", Value: 4, Usage: "spec: tokens drafted per step (K)"},
		&cli.IntFlag{Name: "stages", Value: 2, Usage: "pipeline: number of stages"},
		&cli.StringFlag{Name: "split", Usage: "pipeline: layer ranges, e.g. 0:14,14:28 (default: balanced; with --hosts, weighted by the memory each rank reports)"},
		&cli.StringFlag{Name: "link", Value: "loopback", Usage: "pipeline: link profile (loopback, thunderbolt, wifi, ethernet-1g, ethernet-10g, custom:latency=..,jitter=..,bandwidth=..)"},
		&cli.StringFlag{Name: "transport", Value: "tcp", Usage: "pipeline: tcp (the project's authenticated, encrypted framing), mlx-ring (MLX's distributed ring backend; loopback only) or mlx-jaccl (MLX's RDMA over Thunderbolt 5; macOS only, untested on hardware)"},
		&cli.StringFlag{Name: "reply", Value: "token", Usage: "pipeline: the last stage replies with the sampled token, or topk:K candidates the driver samples from"},
		&cli.StringFlag{Name: "hosts", Usage: "pipeline: YAML file with the address of each stage's `hippo rank` on other machines (default: start the stages here)"},
	}, pipelineSecretFlags()...)
}

// usePipelineSecret makes the secret of --secret-file the pipeline's: the plan reads it from
// $HIPPO_SECRET, which the stages started here inherit. It refuses --secret.
func usePipelineSecret(c *cli.Context) error {
	secret, err := pipelineSecret(c)
	if err != nil {
		return err
	}
	if c.String("secret-file") != "" {
		return os.Setenv(transport.SecretEnv, secret)
	}
	return nil
}
