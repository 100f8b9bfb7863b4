package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"text/tabwriter"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
)

// SpecCompareOptions configures CompareSpec.
type SpecCompareOptions struct {
	Target, Draft string // checkpoint directories
	Drafters      []string
	MaxK          int
	Rounds        int
	MaxTokens     int
	Prompts       []string
}

// ExpectedSpeedup is Leviathan et al.'s expected speedup of speculative decoding with per-token
// acceptance rate a, K drafted tokens and a draft step costing c target steps: the expected tokens
// per step, (1 - a^(K+1)) / (1 - a), over the cost of a step, K*c + 1 (one verify forward is
// counted as one target step).
func ExpectedSpeedup(a float64, k int, c float64) float64 {
	var tokens float64
	if a >= 1 {
		tokens = float64(k + 1)
	} else {
		tokens = (1 - math.Pow(a, float64(k+1))) / (1 - a)
	}
	return tokens / (float64(k)*c + 1)
}

// CompareSpec measures speculative decoding against standalone decoding on the same target, for
// every drafter and K = 1..MaxK, alternating standalone and speculative rounds, and prints the
// measured speedup beside the analytic expectation from the measured acceptance and cost ratio.
func CompareSpec(ctx context.Context, o SpecCompareOptions, w io.Writer) error {
	e, err := engines.Open(ctx, engines.Options{Model: o.Target})
	if err != nil {
		return err
	}
	defer e.Close()
	base := Config{Model: o.Target, MaxTokens: o.MaxTokens, IgnoreEOS: true}
	// Cost ratio c: one decode step of the draft model over one of the target.
	var c float64
	var dm *engines.Engine
	if o.Draft != "" {
		if dm, err = engines.Open(ctx, engines.Options{Model: o.Draft}); err != nil {
			return err
		}
		defer dm.Close()
		var tf, df []float64
		for _, p := range o.Prompts {
			bc := base
			bc.Prompt = p
			tr, err := Standalone(ctx, e, bc, nil)
			if err != nil {
				return err
			}
			dr, err := Standalone(ctx, dm, bc, nil)
			if err != nil {
				return err
			}
			tf = append(tf, meanForward(tr))
			df = append(df, meanForward(dr))
		}
		c = stat.Mean(df, nil) / stat.Mean(tf, nil)
		fmt.Fprintf(w, "draft/target cost ratio c = %.3f (decode step %.2f ms vs %.2f ms)\n", c, stat.Mean(df, nil), stat.Mean(tf, nil))
	}
	for _, name := range o.Drafters {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "drafter\tK\tacceptance\ttokens/step\tstandalone tok/s\tspec tok/s\tmeasured speedup\texpected speedup\t")
		var d engines.Drafter
		cost := c
		switch name {
		case "model":
			if dm == nil {
				return fmt.Errorf("drafter model needs --draft")
			}
			d = engines.NewModelDrafter(dm)
		case "lookup":
			d, cost = engines.LookupDrafter{}, 0
		default:
			return fmt.Errorf("bench spec: drafter %q: use model or lookup", name)
		}
		best, bestK, breakEven := 0.0, 0, 0
		for k := 1; k <= o.MaxK; k++ {
			var alone, spec, acc, tps []float64
			for round := -1; round < o.Rounds; round++ {
				for _, p := range o.Prompts {
					bc := base
					bc.Prompt = p
					s, err := Standalone(ctx, e, bc, nil)
					if err != nil {
						return err
					}
					bc.DraftTokens = k
					r, err := Spec(ctx, e, d, bc, nil)
					if err != nil {
						return err
					}
					if round < 0 {
						continue
					}
					alone = append(alone, s.DecodeTokS)
					spec = append(spec, r.DecodeTokS)
					acc = append(acc, r.Acceptance.Rate)
					tps = append(tps, 1+r.Acceptance.MeanAccepted)
				}
			}
			a := stat.Mean(acc, nil)
			measured := stat.Mean(spec, nil) / stat.Mean(alone, nil)
			if measured > best {
				best, bestK = measured, k
			}
			if measured > 1 {
				breakEven = k
			}
			fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.2f\t%.1f\t%.1f\t%.2fx\t%.2fx\t\n", name, k, a, stat.Mean(tps, nil),
				stat.Mean(alone, nil), stat.Mean(spec, nil), measured, ExpectedSpeedup(a, k, cost))
		}
		tw.Flush()
		if breakEven == 0 {
			fmt.Fprintf(w, "%s: no K beat standalone decoding (best %.2fx at K=%d)\n", name, best, bestK)
		} else {
			fmt.Fprintf(w, "%s: best %.2fx at K=%d; speculation pays off up to K=%d\n", name, best, bestK, breakEven)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\n%d rounds x %d prompts per row after a warm-up, standalone and speculative alternating; %d tokens each; greedy.\n", o.Rounds, len(o.Prompts), o.MaxTokens)
	return nil
}

func meanForward(r Result) float64 {
	var xs []float64
	for _, s := range r.Steps {
		xs = append(xs, s.ForwardMS+s.SampleMS)
	}
	return stat.Mean(xs, nil)
}
