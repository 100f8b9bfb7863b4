package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/transport"
)

// PipelineCompareOptions configures ComparePipeline.
type PipelineCompareOptions struct {
	Model string // checkpoint directory
	DType string
	Links []string
	// Transports are compared on every link they can run on: tcp (default) and mlx-ring, which
	// runs on loopback only (the link shaper wraps the project's TCP connections, not MLX's).
	Transports []string
	Rounds     int
	MaxTokens  int
	Prompt     string
	Exe        string // hippo binary for the stages
}

// ComparePipeline measures the per-token time of the standalone engine and of a 2-stage pipeline
// for each link profile and transport, alternating standalone and pipeline rounds, and prints each
// profile's predicted network time per step beside the measured one, and the CPU time all
// processes spent per token.
//
// Every pipeline round starts its stages afresh and warms them with a short generation, so that
// no stage process is alive during a standalone round: MLX's ring polls its sockets while a stage
// waits for its next message, which would slow the standalone rounds down.
func ComparePipeline(ctx context.Context, o PipelineCompareOptions, w io.Writer) error {
	if len(o.Transports) == 0 {
		o.Transports = []string{pipeline.TransportTCP}
	}
	for i, t := range o.Transports {
		var err error
		if o.Transports[i], err = pipeline.ParseTransport(t); err != nil {
			return err
		}
	}
	e, err := engines.Open(ctx, engines.Options{Model: o.Model, DType: o.DType})
	if err != nil {
		return err
	}
	defer e.Close()
	hiddenBytes := e.Config().HiddenSize * e.DType().Size()
	c := Config{Model: o.Model, Prompt: o.Prompt, MaxTokens: o.MaxTokens, IgnoreEOS: true, Dtype: o.DType, Stages: 2}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "link\ttransport\tstandalone ms/token\tpipeline ms/token\tpipeline/standalone\tforward ms (stage 0 + 1)\tnetwork ms measured\tnetwork ms predicted\tmeasured/predicted\tbytes/step\tCPU ms/token standalone\tCPU ms/token pipeline\t")
	var skipped, ratios []string
	for _, link := range o.Links {
		prof, err := transport.ParseProfile(link)
		if err != nil {
			return err
		}
		var trs []string
		for _, tr := range o.Transports {
			if tr == pipeline.TransportRing && prof.Name != "loopback" {
				skipped = append(skipped, link)
				continue
			}
			trs = append(trs, tr)
		}
		c.Link = link
		alone, cpuAlone, rows, err := comparePipelineLink(ctx, e, c, trs, o)
		if err != nil {
			return err
		}
		if len(trs) == 2 && trs[0] != trs[1] {
			a, b := rows[0], rows[1]
			ratios = append(ratios, fmt.Sprintf("%s: %s/%s pipeline ms/token %.2fx, network %.2fx, forward %.2fx, CPU/token %s",
				link, trs[1], trs[0], stat.Mean(b.piped, nil)/stat.Mean(a.piped, nil), stat.Mean(b.net, nil)/stat.Mean(a.net, nil),
				stat.Mean(b.fwd, nil)/stat.Mean(a.fwd, nil), ratioOrDash(b.cpu, a.cpu)))
		}
		for i, tr := range trs {
			row := rows[i]
			pred, ratio := "-", "-"
			if tr == pipeline.TransportTCP {
				// One decode step: a Forward frame with one hidden state out, a Reply with a token back.
				p := prof.Predict([]int{transport.HeaderSize + 32 + hiddenBytes, transport.HeaderSize + 32})
				predMS := float64(p) / float64(time.Millisecond)
				pred = fmt.Sprintf("%.3f", predMS)
				if predMS > 0 {
					ratio = fmt.Sprintf("%.2f", stat.Mean(row.net, nil)/predMS)
				}
			}
			a, b := stat.Mean(alone, nil), stat.Mean(row.piped, nil)
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.3fx\t%.2f\t%.3f\t%s\t%s\t%.0f\t%s\t%s\t\n", link, tr, a, b, b/a,
				stat.Mean(row.fwd, nil), stat.Mean(row.net, nil), pred, ratio, stat.Mean(row.bytes, nil),
				meanOrDash(cpuAlone), meanOrDash(row.cpu))
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d rounds per link after a warm-up, standalone and each transport alternating; %d tokens per round; %s hidden states (%d bytes).\n",
		o.Rounds, o.MaxTokens, e.DType(), hiddenBytes)
	fmt.Fprintln(w, "Measured network = driver round trip minus the remote stages' own forward time; prediction = the profile's latency + mean jitter + serialization for the request and the reply (loopback's own cost not included).")
	fmt.Fprintln(w, "Every pipeline round starts fresh stage processes (warmed with a 4-token run), so none is alive during standalone rounds. CPU ms/token: user + system time of every process of the run (driver and stages) per generated token.")
	for _, r := range ratios {
		fmt.Fprintln(w, "Side by side, "+r+".")
	}
	if len(skipped) > 0 {
		fmt.Fprintf(w, "mlx-ring runs on loopback only (skipped on %s): link profiles shape the project's TCP framing in user space; MLX's ring opens its own sockets, which only a real link can slow down.\n", strings.Join(skipped, ", "))
	}
	for _, tr := range o.Transports {
		if tr == pipeline.TransportRing {
			fmt.Fprintln(w, "mlx-ring: MLX's ring busy-polls its non-blocking sockets while a receive is pending, so each waiting process keeps a core busy; on a machine with few cores that slows the stage that is computing.")
		}
	}
	return nil
}

// pipelineRow is what one transport measured on one link, per round or per step.
type pipelineRow struct {
	piped, fwd, net, bytes, cpu []float64
}

// comparePipelineLink alternates, round by round, a standalone run and a run over each transport
// (fresh stages each time), and returns the standalone ms/token and CPU ms/token per round and
// one row per transport.
func comparePipelineLink(ctx context.Context, e *engines.Engine, c Config, trs []string, o PipelineCompareOptions) (alone, cpuAlone []float64, rows []pipelineRow, err error) {
	rows = make([]pipelineRow, len(trs))
	for round := -1; round < o.Rounds; round++ { // round -1 warms everything up
		cpu0 := selfCPU()
		s, err := Standalone(ctx, e, c, nil)
		if err != nil {
			return nil, nil, nil, err
		}
		if round >= 0 {
			alone = append(alone, 1000/s.DecodeTokS)
			cpuAlone = append(cpuAlone, ms(selfCPU()-cpu0)/float64(len(s.Tokens)))
		}
		for i, tr := range trs {
			pc := c
			pc.Transport = tr
			pr, cpu, err := freshPipelineRun(ctx, pc, o)
			if err != nil {
				return nil, nil, nil, err
			}
			if round < 0 {
				continue
			}
			row := &rows[i]
			row.piped = append(row.piped, 1000/pr.DecodeTokS)
			if cpu > 0 {
				row.cpu = append(row.cpu, ms(cpu)/float64(len(pr.Tokens)))
			}
			for _, st := range pr.Steps {
				row.fwd = append(row.fwd, st.ForwardMS)
				row.net = append(row.net, st.NetworkMS)
				row.bytes = append(row.bytes, float64(st.Bytes))
			}
		}
	}
	return alone, cpuAlone, rows, nil
}

// freshPipelineRun starts the stages, warms them with a 4-token run, measures c and stops them.
// cpu is the user + system time of every process during the measured run (0 where unknown).
func freshPipelineRun(ctx context.Context, c Config, o PipelineCompareOptions) (res Result, cpu time.Duration, err error) {
	p := Pipelines{Exe: o.Exe}
	defer p.Close()
	warm := c
	warm.MaxTokens = min(4, c.MaxTokens)
	if _, err := p.Run(ctx, o.Model, warm, nil); err != nil {
		return res, 0, err
	}
	cpu0, ok0 := pipelineCPU(&p, c.Stages)
	if res, err = p.Run(ctx, o.Model, c, nil); err != nil {
		return res, 0, err
	}
	if cpu1, ok1 := pipelineCPU(&p, c.Stages); ok0 && ok1 {
		cpu = cpu1 - cpu0
	}
	return res, cpu, nil
}

func meanOrDash(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", stat.Mean(xs, nil))
}

func ratioOrDash(a, b []float64) string {
	if len(a) == 0 || len(b) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", stat.Mean(a, nil)/stat.Mean(b, nil))
}

// selfCPU is this process's user + system time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pipelineCPU is the user + system time so far of this process and of p's local stages 1 to
// stages-1; false where the stages' times cannot be read (no /proc).
func pipelineCPU(p *Pipelines, stages int) (time.Duration, bool) {
	total := selfCPU()
	l := p.Local()
	if l == nil || runtime.GOOS != "linux" {
		return total, false
	}
	for k := 1; k < stages; k++ {
		t, err := procCPU(l.Process(k).Pid)
		if err != nil {
			return total, false
		}
		total += t
	}
	return total, true
}

// procCPU reads a process's user + system time from /proc/PID/stat (fields 14 and 15, in the
// kernel's USER_HZ ticks, 100 per second on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:]) // from field 3 (state) on
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}
