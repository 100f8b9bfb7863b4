package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines/model"
)

// ServeCompareOptions configures CompareServers.
type ServeCompareOptions struct {
	Model       string // checkpoint directory
	Exe         string // the hippo binary
	Root        string // checkout with .venv (mlx_lm.server, the OpenAI SDK)
	Concurrency []int
	Rounds      int
	MaxTokens   int
	Prompt      string
	// MaxBatch is hippo serve's --max-batch (0: its default).
	MaxBatch int
	// Baseline is another hippo binary (e.g. built from an earlier commit) served as a third
	// server with the same flags but --max-batch, to compare against; empty: none.
	Baseline string
	// Client is the load client: "sdk" (the official OpenAI Python SDK, bench/peers/openai_load.py,
	// the default) or "go" (OpenAI.Burst).
	Client string
}

// CompareServers starts `hippo serve` and `mlx_lm.server` on the same checkpoint, in the same
// compute dtype (the checkpoint's stored dtype, which is what mlx_lm.server computes in; hippo
// gets it as --dtype) and with the same BLAS (OpenBLAS preloaded into mlx_lm.server), and
// measures bursts of n concurrent streams from the client's side, the servers alternating round
// by round. Aggregate tok/s is completion tokens over the wall time of the whole burst; TTFT and
// inter-token latency are pooled over the streams of all rounds.
func CompareServers(ctx context.Context, o ServeCompareOptions, w io.Writer) error {
	cfg, err := model.ReadConfig(o.Model)
	if err != nil {
		return err
	}
	dtype, err := storedDType(cfg.TorchDtype)
	if err != nil {
		return fmt.Errorf("%s: %w", o.Model, err)
	}
	client := o.Client
	if client == "" {
		client = "sdk"
	}
	if client != "sdk" && client != "go" {
		return fmt.Errorf("client %q: use sdk (the OpenAI Python SDK) or go", client)
	}
	hp, err := freeAddr()
	if err != nil {
		return err
	}
	mp, err := freeAddr()
	if err != nil {
		return err
	}
	bp, err := freeAddr()
	if err != nil {
		return err
	}
	serveArgs := func(addr string) []string {
		return []string{"serve", "--model", o.Model, "--listen", addr, "--dtype", dtype, "--max-queue", "256"}
	}
	args := serveArgs(hp)
	if o.MaxBatch > 0 {
		args = append(args, "--max-batch", fmt.Sprint(o.MaxBatch))
	}
	hippo := exec.CommandContext(ctx, o.Exe, args...)
	cmds := []*exec.Cmd{hippo}
	_, port, _ := net.SplitHostPort(mp)
	py := filepath.Join(o.Root, ".venv", "bin", "python")
	peer := exec.CommandContext(ctx, py, "-m", "mlx_lm.server", "--model", o.Model, "--host", "127.0.0.1", "--port", port)
	peer.Env = os.Environ()
	blas := OpenBLAS()
	if blas != "" {
		peer.Env = append(peer.Env, "LD_PRELOAD="+blas)
	}
	cmds = append(cmds, peer)
	if o.Baseline != "" {
		cmds = append(cmds, exec.CommandContext(ctx, o.Baseline, serveArgs(bp)...))
	}
	for _, c := range cmds {
		c.Stdout, c.Stderr = io.Discard, io.Discard
		if err := c.Start(); err != nil {
			return err
		}
		defer func(c *exec.Cmd) {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		}(c)
	}
	servers := []struct {
		name, base, model string
	}{
		{"hippo serve", "http://" + hp + "/v1", filepath.Base(o.Model)},
		{"mlx_lm.server", "http://" + mp + "/v1", o.Model},
	}
	if o.Baseline != "" {
		servers = append(servers, struct{ name, base, model string }{"baseline hippo", "http://" + bp + "/v1", filepath.Base(o.Model)})
		fmt.Fprintf(w, "baseline hippo: %s\n", o.Baseline)
	}
	for _, s := range servers {
		if err := waitHTTP(ctx, s.base+"/models", 2*time.Minute); err != nil {
			return fmt.Errorf("%s did not come up: %w", s.name, err)
		}
	}
	fmt.Fprintf(w, "checkpoint %s; compute dtype %s on both sides (hippo --dtype %s; mlx_lm.server computes in the stored dtype)\n", o.Model, dtype, dtype)
	if blas != "" {
		fmt.Fprintf(w, "BLAS: OpenBLAS on both sides (%s preloaded into mlx_lm.server)\n", blas)
	}
	fmt.Fprintf(w, "client: %s; %d tokens per stream, temperature 0, completions endpoint, streaming\n\n", clientName(client), o.MaxTokens)
	burst := func(base, model string, n int) (Burst, error) {
		c := Config{BaseURL: base, Model: model, Prompt: o.Prompt, MaxTokens: o.MaxTokens, Concurrency: n}
		if client == "go" {
			var oa OpenAI
			return oa.Burst(ctx, c)
		}
		return sdkBurst(ctx, py, filepath.Join(o.Root, "bench", "peers", "openai_load.py"), c)
	}
	type acc struct {
		tps        []float64
		ttft, gaps []float64 // ms
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "streams\tserver\tdtype\ttok/s\t±sd\tvs mlx_lm\tTTFT p50 ms\tTTFT p99 ms\tITL p50 ms\tITL p99 ms\t")
	var single float64
	for _, n := range o.Concurrency {
		res := make([]acc, len(servers))
		for round := -1; round < o.Rounds; round++ {
			for k := range servers {
				// Rotate which server goes first, so none always runs on a machine warmed (or
				// heated) by another.
				i := (k + round + 1) % len(servers)
				s := servers[i]
				b, err := burst(s.base, s.model, n)
				if err != nil {
					return fmt.Errorf("%s, %d streams: %w", s.name, n, err)
				}
				if round < 0 {
					continue // warm-up
				}
				res[i].tps = append(res[i].tps, b.TokS())
				for _, t := range b.TTFT {
					res[i].ttft = append(res[i].ttft, ms(t))
				}
				for _, g := range b.Gaps {
					res[i].gaps = append(res[i].gaps, ms(g))
				}
			}
		}
		for i, s := range servers {
			r := res[i]
			mean, sd := stat.MeanStdDev(r.tps, nil)
			ratio := "-"
			if q := PairedRatios(r.tps, res[1].tps); i != 1 && len(q) > 0 {
				// Each round runs the servers back to back: the ratio within a round is what
				// load drift on a shared machine moves least.
				ratio = fmt.Sprintf("%.2fx [%.2f-%.2f]", Median(q), slices.Min(q), slices.Max(q))
			}
			if i == 0 {
				if n == 1 {
					single = mean
				} else if single > 0 {
					ratio += fmt.Sprintf(" (%.1fx its 1-stream)", mean/single)
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%.1f\t%.1f\t%s\t%.0f\t%.0f\t%.1f\t%.1f\t\n", n, s.name, dtype, mean, sd, ratio,
				quantile(r.ttft, 0.5), quantile(r.ttft, 0.99), quantile(r.gaps, 0.5), quantile(r.gaps, 0.99))
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d measured rounds per row after a warm-up, servers alternating (which goes first rotates every round).\n", o.Rounds)
	fmt.Fprintln(w, "tok/s: completion tokens of all streams / wall time of the whole burst (queueing and prefill included); mean ± sd over rounds; vs mlx_lm: median over rounds of the ratio within a round [lowest-highest].")
	fmt.Fprintln(w, "TTFT: request sent to first text, per stream, queueing included; ITL: gaps between text chunks; percentiles pooled over all rounds' streams.")
	return nil
}

func clientName(c string) string {
	if c == "go" {
		return "hippo's Go SSE client (bench.OpenAI)"
	}
	return "official OpenAI Python SDK (bench/peers/openai_load.py), one thread per stream"
}

// storedDType maps config.json's torch_dtype to a compute dtype name both servers run.
func storedDType(torch string) (string, error) {
	switch torch {
	case "float32":
		return "f32", nil
	case "bfloat16", "":
		return "bf16", nil
	case "float16":
		return "f16", nil
	}
	return "", fmt.Errorf("torch_dtype %q: hippo bench serve compares float32, bfloat16 or float16 checkpoints", torch)
}

// quantile is the q-quantile of xs (empirical, no interpolation); NaN when empty.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return stat.Quantile(q, stat.Empirical, s, nil)
}

// sdkBurst runs one burst through the OpenAI Python SDK (bench/peers/openai_load.py).
func sdkBurst(ctx context.Context, py, script string, c Config) (Burst, error) {
	in, _ := json.Marshal(map[string]any{
		"base_url": c.BaseURL, "model": c.Model, "prompt": c.Prompt, "max_tokens": c.MaxTokens,
		"streams": max(c.Concurrency, 1), "api_key": firstEnv("HIPPO_OPENAI_KEY", "OPENAI_API_KEY"),
	})
	cmd := exec.CommandContext(ctx, py, script)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Burst{}, fmt.Errorf("openai sdk client: %w\n%s", err, stderr.Bytes())
	}
	var r struct {
		Wall    float64
		Streams []struct {
			TTFT             *float64 `json:"ttft"`
			Gaps             []float64
			CompletionTokens int `json:"completion_tokens"`
			Error            string
		}
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Burst{}, fmt.Errorf("openai sdk client: %w: %s", err, out)
	}
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	b := Burst{Wall: sec(r.Wall)}
	for _, s := range r.Streams {
		if s.Error != "" {
			return b, fmt.Errorf("openai sdk client: %s", s.Error)
		}
		if s.TTFT == nil {
			return b, fmt.Errorf("openai sdk client: a stream sent no text")
		}
		b.Tokens += s.CompletionTokens
		b.TTFT = append(b.TTFT, sec(*s.TTFT))
		for _, g := range s.Gaps {
			b.Gaps = append(b.Gaps, sec(g))
		}
	}
	return b, nil
}

func firstEnv(keys ...string) string {
	for _, k := range keys {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitHTTP(ctx context.Context, url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer from %s within %v (last error: %v)", url, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
