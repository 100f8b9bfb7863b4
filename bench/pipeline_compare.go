package bench

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/transport"
)

// PipelineCompareOptions configures ComparePipeline.
type PipelineCompareOptions struct {
	Model     string // checkpoint directory
	DType     string
	Links     []string
	Rounds    int
	MaxTokens int
	Prompt    string
	Exe       string // hippo binary for the stages
}

// ComparePipeline measures the per-token time of the standalone engine and of a 2-stage pipeline
// under each link profile, alternating standalone and pipeline rounds, and prints each profile's
// predicted network time per step beside the measured one.
func ComparePipeline(ctx context.Context, o PipelineCompareOptions, w io.Writer) error {
	e, err := engines.Open(ctx, engines.Options{Model: o.Model, DType: o.DType})
	if err != nil {
		return err
	}
	defer e.Close()
	hiddenBytes := e.Config().HiddenSize * e.DType().Size()
	c := Config{Model: o.Model, Prompt: o.Prompt, MaxTokens: o.MaxTokens, IgnoreEOS: true, Dtype: o.DType, Stages: 2}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "link\tstandalone ms/token\tpipeline ms/token\tpipeline/standalone\tforward ms (stage 0 + 1)\tnetwork ms measured\tnetwork ms predicted\tmeasured/predicted\tbytes/step\t")
	for _, link := range o.Links {
		prof, err := transport.ParseProfile(link)
		if err != nil {
			return err
		}
		var p Pipelines
		p.Exe = o.Exe
		var alone, piped, fwd, net, bytes []float64
		c.Link = link
		for round := -1; round < o.Rounds; round++ { // round -1 warms both up
			s, err := Standalone(ctx, e, c, nil)
			if err != nil {
				p.Close()
				return err
			}
			pr, err := p.Run(ctx, o.Model, c, nil)
			if err != nil {
				p.Close()
				return err
			}
			if round < 0 {
				continue
			}
			alone = append(alone, 1000/s.DecodeTokS)
			piped = append(piped, 1000/pr.DecodeTokS)
			for _, st := range pr.Steps {
				fwd = append(fwd, st.ForwardMS)
				net = append(net, st.NetworkMS)
				bytes = append(bytes, float64(st.Bytes))
			}
		}
		p.Close()
		// One decode step: a Forward frame with one hidden state out, a Reply with a token back.
		pred := prof.Predict([]int{transport.HeaderSize + 32 + hiddenBytes, transport.HeaderSize + 32})
		a, b := stat.Mean(alone, nil), stat.Mean(piped, nil)
		nm := stat.Mean(net, nil)
		predMS := float64(pred) / float64(time.Millisecond)
		ratio := "-"
		if predMS > 0 {
			ratio = fmt.Sprintf("%.2f", nm/predMS)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.3fx\t%.2f\t%.3f\t%.3f\t%s\t%.0f\t\n", link, a, b, b/a, stat.Mean(fwd, nil), nm, predMS, ratio, stat.Mean(bytes, nil))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d rounds per link after a warm-up, standalone and pipeline alternating; %d tokens per round; %s hidden states (%d bytes).\n",
		o.Rounds, o.MaxTokens, e.DType(), hiddenBytes)
	fmt.Fprintln(w, "Measured network = driver round trip minus the remote stages' own forward time; prediction = the profile's latency + mean jitter + serialization for the request and the reply (loopback's own cost not included).")
	return nil
}
