package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
)

// ServeCompareOptions configures CompareServers.
type ServeCompareOptions struct {
	Model       string // checkpoint directory
	Exe         string // the hippo binary
	Root        string // checkout with .venv (mlx_lm.server)
	Concurrency []int
	Rounds      int
	MaxTokens   int
	Prompt      string
}

// CompareServers starts `hippo serve` and `mlx_lm.server` on the same checkpoint and measures,
// side by side from each server's token stream: TTFT, and aggregate decode tok/s at each
// concurrency. It also prints the TTFT the HTTP layer adds to a direct engine call.
func CompareServers(ctx context.Context, o ServeCompareOptions, w io.Writer) error {
	// Direct engine TTFT first, then free the engine so the servers have the machine.
	e, err := engines.Open(ctx, engines.Options{Model: o.Model})
	if err != nil {
		return err
	}
	var direct []float64
	for round := -1; round < o.Rounds; round++ {
		r, err := Standalone(ctx, e, Config{Model: o.Model, Prompt: o.Prompt, MaxTokens: 2, IgnoreEOS: true}, nil)
		if err != nil {
			e.Close()
			return err
		}
		if round >= 0 {
			direct = append(direct, r.TTFTMS)
		}
	}
	e.Close()
	hp, err := freeAddr()
	if err != nil {
		return err
	}
	mp, err := freeAddr()
	if err != nil {
		return err
	}
	hippo := exec.CommandContext(ctx, o.Exe, "serve", "--model", o.Model, "--listen", hp)
	_, port, _ := net.SplitHostPort(mp)
	peer := exec.CommandContext(ctx, filepath.Join(o.Root, ".venv", "bin", "python"), "-m", "mlx_lm.server",
		"--model", o.Model, "--host", "127.0.0.1", "--port", port)
	peer.Env = os.Environ()
	if lib := OpenBLAS(); lib != "" {
		peer.Env = append(peer.Env, "LD_PRELOAD="+lib)
	}
	for _, c := range []*exec.Cmd{hippo, peer} {
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
	for _, s := range servers {
		if err := waitHTTP(ctx, s.base+"/models", 2*time.Minute); err != nil {
			return fmt.Errorf("%s did not come up: %w", s.name, err)
		}
	}
	fmt.Fprintf(w, "direct engine TTFT: %.1f ms (mean of %d)\n\n", stat.Mean(direct, nil), len(direct))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "streams\thippo TTFT ms\tmlx_lm TTFT ms\thippo tok/s\tmlx_lm tok/s\tratio\thippo TTFT added by HTTP ms\t")
	var oa OpenAI
	for _, n := range o.Concurrency {
		var ttft, tps [2][]float64
		for round := -1; round < o.Rounds; round++ {
			for i, s := range servers {
				r, err := oa.Run(ctx, Config{Mode: "openai", BaseURL: s.base, Model: s.model, Prompt: o.Prompt,
					MaxTokens: o.MaxTokens, Concurrency: n})
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				if round >= 0 {
					ttft[i] = append(ttft[i], r.TTFTMS)
					tps[i] = append(tps[i], r.DecodeTokS)
				}
			}
		}
		added := "-"
		if n == 1 {
			added = fmt.Sprintf("%.1f", stat.Mean(ttft[0], nil)-stat.Mean(direct, nil))
		}
		fmt.Fprintf(tw, "%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.2fx\t%s\t\n", n, stat.Mean(ttft[0], nil), stat.Mean(ttft[1], nil),
			stat.Mean(tps[0], nil), stat.Mean(tps[1], nil), stat.Mean(tps[0], nil)/stat.Mean(tps[1], nil), added)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d rounds per row after a warm-up, servers alternating; %d tokens per stream; completions endpoint, streaming.\n", o.Rounds, o.MaxTokens)
	fmt.Fprintln(w, "tok/s is aggregate: all streams' tokens after their first over the wall time after the mean first token. TTFT includes queueing behind the other streams.")
	return nil
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
