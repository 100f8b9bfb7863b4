package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/gonum/stat/distuv"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/model"
)

// SpecCompareOptions configures CompareSpec.
type SpecCompareOptions struct {
	Target string
	// Draft is the model drafter's checkpoint; DFlash the DFlash draft's.
	Draft, DFlash string
	Drafters      []string
	// MaxK bounds the model and lookup drafters' K (1..MaxK); Blocks lists the DFlash blocks B
	// measured (B-1 drafts verified per step; each must be at most the draft's trained block;
	// none: those of 4, 8 and 16 within it).
	MaxK   int
	Blocks []int
	Rounds int
	// Warmup runs one untimed generation of each kind before measuring.
	Warmup    bool
	MaxTokens int
	Prompts   []string
	// Chat wraps each prompt in the target's chat template and stops at its end of turn (both
	// sides emit the same tokens, so the lengths match); otherwise exactly MaxTokens are made.
	Chat  bool
	DType string
	// AllowDivergence measures a speculative run whose tokens part from standalone's (on a GPU
	// in bf16, say) and counts it, where otherwise the benchmark stops with an error.
	AllowDivergence bool
	// DraftConfidences are the gates the dflash rows are measured at, each a table: above 0, each
	// greedy draft is cut to the positions the drafter gives at least that joint probability
	// (engines.DFlashDrafter.SetConfidence); none: 0 alone, whole blocks.
	DraftConfidences []float64
}

// ExpectedSpeedup is Leviathan et al.'s expected speedup of speculative decoding with per-token
// acceptance rate a (see AcceptanceRate) and K drafted tokens, proposing at a share q of its steps:
// the expected tokens per step (ExpectedStepTokens) over what a step costs in target decode
// steps, its drafting plus its verify forward. The paper counts the verify as one step (verify
// 1); drafting is K*c for a draft model whose step costs c, one forward's c for a block drafter
// (DFlash).
func ExpectedSpeedup(a float64, k int, q, drafting, verify float64) float64 {
	return ExpectedStepTokens(a, k, q) / (drafting + verify)
}

// ExpectedTokens is the expected number of tokens a speculative step emits with k drafts when the
// target keeps each draft with probability a once it kept the ones before: (1 - a^(k+1)) / (1 - a).
func ExpectedTokens(a float64, k int) float64 {
	if a >= 1 {
		return float64(k + 1)
	}
	return (1 - math.Pow(a, float64(k+1))) / (1 - a)
}

// ExpectedStepTokens is ExpectedTokens for a drafter that proposes k drafts at a share q of its
// steps and nothing at the others (lookup where it finds no match), whose steps emit one token:
// 1 + q((1 - a^(k+1)) / (1 - a) - 1).
func ExpectedStepTokens(a float64, k int, q float64) float64 {
	return 1 + q*(ExpectedTokens(a, k)-1)
}

// DraftingShare is q: the share of steps that proposed at least one draft, from the drafting
// steps of each run and the steps of all of them (1 without steps).
func DraftingShare(drafting []int, steps int) float64 {
	if steps <= 0 {
		return 1
	}
	n := 0
	for _, d := range drafting {
		n += d
	}
	return float64(n) / float64(steps)
}

// AcceptanceRate estimates a, Leviathan et al.'s per-token acceptance rate (the chance that the
// target keeps a draft when it kept every draft before it), from runs' acceptance by position
// (byPos[j][i]: the share of run j's drafting steps that kept draft i+1) weighted by their steps
// that drafted (Acceptance.DraftingSteps).
// Each step is a run of trials: the drafts it kept succeeded and, unless it kept them all, one
// failed, so the maximum-likelihood a is kept drafts over kept drafts plus steps that rejected
// one: sum(r) / (sum(r) + 1 - r_K) per step. This is not kept / drafted, which counts the drafts
// after the first rejection as failures too and so reads far lower at large K. (A drafter that
// proposes fewer than K drafts at some steps, such as lookup, makes it an approximation.) NaN
// when nothing was drafted.
func AcceptanceRate(byPos [][]float64, steps []int) float64 {
	var kept, failed float64
	for j, r := range byPos {
		if len(r) == 0 || j >= len(steps) || steps[j] == 0 {
			continue
		}
		var sum float64
		for _, v := range r {
			sum += v
		}
		kept += float64(steps[j]) * sum
		failed += float64(steps[j]) * (1 - r[len(r)-1])
	}
	if kept+failed == 0 {
		return math.NaN()
	}
	return kept / (kept + failed)
}

// specRow is one drafter setting measured.
type specRow struct {
	k                       int
	alone, spec, acc, tps   []float64
	draftMS, stepMS         []float64
	verifyMS                []float64 // mean verify step of each speculative run, beside stepMS
	byPos                   [][]float64
	steps                   []int // steps of each run that drafted, beside byPos
	normalised, verifySteps int
	// gated: the drafts were cut by the drafter's confidence, so K varies from step to step and
	// the analytic columns, which assume K drafts a step, are not printed.
	gated bool
}

// add records one prompt's standalone run s and speculative run r.
func (row *specRow) add(s, r Result) {
	row.alone = append(row.alone, s.DecodeTokS)
	row.spec = append(row.spec, r.DecodeTokS)
	row.acc = append(row.acc, r.Acceptance.Rate)
	row.tps = append(row.tps, 1+r.Acceptance.MeanAccepted)
	row.byPos = append(row.byPos, r.Acceptance.ByPosition)
	row.steps = append(row.steps, r.Acceptance.DraftingSteps(len(r.Steps)))
	row.stepMS = append(row.stepMS, meanForward(s))
	row.verifyMS = append(row.verifyMS, meanForward(r))
	for _, st := range r.Steps {
		row.draftMS = append(row.draftMS, st.DraftMS)
	}
	row.normalised += r.Acceptance.NormalisedSteps
	row.verifySteps += len(r.Steps)
}

// normalisedShare is the share of greedy verify steps that normalised the logits (a possible tie
// after rounding; the others took the raw argmax).
func (r *specRow) normalisedShare() float64 {
	if r.verifySteps == 0 {
		return 0
	}
	return float64(r.normalised) / float64(r.verifySteps)
}

// CompareSpec measures speculative decoding against standalone decoding on the same target, for
// every drafter (model and lookup at K = 1..MaxK, dflash at each block in Blocks), alternating
// standalone and speculative runs prompt by prompt, and prints the measured speedup beside the
// analytic expectation from the measured acceptance and cost ratio, and the acceptance by
// draft position.
func CompareSpec(ctx context.Context, o SpecCompareOptions, w io.Writer) error {
	if len(o.Prompts) == 0 {
		return fmt.Errorf("bench spec: no prompts: give --prompt or --prompts FILE")
	}
	for _, g := range o.DraftConfidences {
		if !engines.ValidDraftConfidence(g) {
			return fmt.Errorf("bench spec: --draft-confidence %g: use 0 (whole blocks) up to below 1, e.g. 0.2", g)
		}
	}
	if len(o.DraftConfidences) > 0 && !contains(o.Drafters, "dflash") {
		return fmt.Errorf("bench spec: --draft-confidence cuts DFlash drafts: add --drafter dflash")
	}
	e, err := engines.Open(ctx, engines.Options{Model: o.Target, DType: o.DType})
	if err != nil {
		return err
	}
	defer e.Close()
	fmt.Fprintf(w, "target %s: %s, %d layers, vocabulary %d, %v\n", o.Target, e.Config().ModelType, e.Config().NumLayers, e.Config().VocabSize, e.DType())
	base := Config{Model: o.Target, MaxTokens: o.MaxTokens, IgnoreEOS: !o.Chat, Chat: o.Chat}
	dv := newDivergences(o.AllowDivergence, "--allow-divergence")
	// run measures one prompt both ways; setting names the drafter and its draft length.
	run := func(p string, d engines.Drafter, k int, setting string) (Result, Result, error) {
		bc := base
		bc.Prompt = p
		s, err := Standalone(ctx, e, bc, nil)
		if err != nil {
			return s, Result{}, err
		}
		bc.DraftTokens = k
		r, err := Spec(ctx, e, d, bc, nil)
		if err == nil {
			err = dv.check(fmt.Sprintf("bench spec: %s on %q", setting, p), s.Tokens, r.Tokens, e.DType().String())
		}
		return s, r, err
	}
	// Cost ratio c of the model drafter: one decode step of the draft model over one of the target.
	var c float64
	var dm *engines.Engine
	if o.Draft != "" && contains(o.Drafters, "model") {
		if dm, err = engines.Open(ctx, engines.Options{Model: o.Draft, DType: o.DType}); err != nil {
			return err
		}
		defer dm.Close()
		rows := ""
		if dc, err := model.ReadConfig(o.Draft); err == nil && dc.VocabSize != dm.Config().VocabSize {
			rows = fmt.Sprintf(" (%d rows mapped onto the target's ids by %s)", dc.VocabSize, model.VocabMapFile)
		}
		fmt.Fprintf(w, "model draft %s: %s, %d layers, vocabulary %d%s, %v\n", o.Draft, dm.Config().ModelType, dm.Config().NumLayers, dm.Config().VocabSize, rows, dm.DType())
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
		var d engines.Drafter
		ks := make([]int, 0, o.MaxK)
		for k := 1; k <= o.MaxK; k++ {
			ks = append(ks, k)
		}
		label := "K"
		switch name {
		case "model":
			if dm == nil {
				return fmt.Errorf("drafter model needs --draft")
			}
			d = engines.NewModelDrafter(dm)
		case "lookup":
			d = engines.LookupDrafter{}
		case "dflash":
			if o.DFlash == "" {
				return fmt.Errorf("drafter dflash needs --dflash DIR (a DFlash draft for this target, e.g. from `just train-dflash`)")
			}
			df, err := engines.NewDFlashDrafter(ctx, e, o.DFlash)
			if err != nil {
				return err
			}
			defer df.Close()
			head := fmt.Sprintf("the target's whole vocabulary of %d", e.Config().VocabSize)
			if n := df.HeadVocab(); n < e.Config().VocabSize {
				head = fmt.Sprintf("%d of the target's %d tokens (%s)", n, e.Config().VocabSize, model.VocabMapFile)
			}
			fmt.Fprintf(w, "dflash draft %s: block %d, head over %s\n", o.DFlash, df.BlockSize(), head)
			d, label, ks = df, "B", nil
			blocks := o.Blocks
			if len(blocks) == 0 {
				blocks = defaultBlocks(df.BlockSize())
			}
			for _, b := range blocks {
				if b < 2 || b > df.BlockSize() {
					return fmt.Errorf("bench spec: dflash block %d: must be in 2..%d (the draft's trained block)", b, df.BlockSize())
				}
				ks = append(ks, b-1)
			}
		default:
			return fmt.Errorf("bench spec: drafter %q: use model, lookup or dflash", name)
		}
		setting := func(k int) string {
			if label == "B" {
				return fmt.Sprintf("%s B=%d", name, k+1)
			}
			return fmt.Sprintf("%s K=%d", name, k)
		}
		if o.Warmup {
			if _, _, err := run(o.Prompts[0], d, ks[0], setting(ks[0])); err != nil {
				return err
			}
		}
		gates := []float64{0}
		gd, gateable := d.(*engines.DFlashDrafter)
		if gateable && len(o.DraftConfidences) > 0 {
			gates = o.DraftConfidences
		}
		for _, gate := range gates {
			if gateable {
				if err := gd.SetConfidence(gate); err != nil {
					return err
				}
			}
			if gate > 0 || len(gates) > 1 {
				fmt.Fprintf(w, "%s, each draft cut where the drafter's joint probability of its drafts falls below %g (0: whole blocks):\n", name, gate)
			}
			var rows []*specRow
			for _, k := range ks {
				row := &specRow{k: k, gated: gate > 0}
				rows = append(rows, row)
				for range o.Rounds {
					for _, p := range o.Prompts {
						s, r, err := run(p, d, k, setting(k))
						if err != nil {
							return err
						}
						row.add(s, r)
					}
				}
			}
			printSpecRows(w, name, label, rows, c)
		}
	}
	fmt.Fprintf(w, "\n%d rounds x %d prompts per row, standalone and speculative alternating prompt by prompt; %s; greedy; %s.\n"+
		"±95%%: half-width of the 95%% t-interval of the per-prompt-and-round speedups; a speedup within it, or printed as 1.00x, breaks even.\n"+
		"expected speedup counts a verify forward as one decode step; verify v is what one cost (mean verify step over mean standalone step), and at measured v the expected tokens per step over (drafting + v).\n",
		o.Rounds, len(o.Prompts), map[bool]string{true: fmt.Sprintf("chat template, up to %d tokens", o.MaxTokens), false: fmt.Sprintf("%d tokens each", o.MaxTokens)}[o.Chat], dv.summary())
	return nil
}

// defaultBlocks are the DFlash blocks bench spec measures when none are given: those of 4, 8 and
// 16 that a draft trained on blocks of trained can draft, or trained itself when none can.
func defaultBlocks(trained int) []int {
	var bs []int
	for _, b := range []int{4, 8, 16} {
		if b <= trained {
			bs = append(bs, b)
		}
	}
	if len(bs) == 0 {
		return []int{trained}
	}
	return bs
}

func printSpecRows(w io.Writer, name, label string, rows []*specRow, c float64) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "drafter\t%s\tacceptance\ta\taccepted/step\tstandalone tok/s\tspec tok/s\tmeasured speedup\t±95%%\texpected speedup\tdraft ms\tcost c\tverify v\tat measured v\tnormalised\t\n", label)
	var pts []specPoint
	for _, r := range rows {
		rate, a := stat.Mean(r.acc, nil), AcceptanceRate(r.byPos, r.steps)
		measured := stat.Mean(r.spec, nil) / stat.Mean(r.alone, nil)
		cost, q := c, DraftingShare(r.steps, r.verifySteps)
		shown, draft := r.k, float64(r.k)*c // draft: the drafting of one step, in target decode steps
		switch name {
		case "dflash":
			// One draft forward per step, relative to a target decode step.
			cost = stat.Mean(r.draftMS, nil) / stat.Mean(r.stepMS, nil)
			shown, draft = r.k+1, cost
		case "lookup":
			// Free to draft, but it proposes only where it finds a match (q < 1).
			cost, draft = 0, 0
		}
		// The analytic speedup counts a verify forward as one decode step; v is what it cost.
		v := stat.Mean(r.verifyMS, nil) / stat.Mean(r.stepMS, nil)
		exp, expV := ExpectedSpeedup(a, r.k, q, draft, 1), ExpectedSpeedup(a, r.k, q, draft, v)
		noise := speedupNoise(r.alone, r.spec)
		pts = append(pts, specPoint{shown: shown, speedup: measured, noise: noise})
		expS, expVS := fmt.Sprintf("%.2fx", exp), fmt.Sprintf("%.2fx", expV)
		if r.gated {
			expS, expVS = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.2f\t%.1f\t%.1f\t%.2fx\t%.2f\t%s\t%.1f\t%.3f\t%.2f\t%s\t%.0f%%\t\n", name, shown, rate, a, stat.Mean(r.tps, nil)-1,
			stat.Mean(r.alone, nil), stat.Mean(r.spec, nil), measured, noise, expS, stat.Mean(r.draftMS, nil), cost, v, expVS, 100*r.normalisedShare())
	}
	tw.Flush()
	for _, r := range rows {
		fmt.Fprintf(w, "%s %s=%d acceptance by draft position:", name, label, map[bool]int{true: r.k + 1, false: r.k}[name == "dflash"])
		for i := range r.k {
			var xs []float64
			for _, bp := range r.byPos {
				if i < len(bp) {
					xs = append(xs, bp[i])
				}
			}
			fmt.Fprintf(w, " %.2f", stat.Mean(xs, nil))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, specVerdict(name, label, pts))
	fmt.Fprintln(w)
}

// specPoint is one measured row of a drafter: its draft length as printed, the measured speedup
// over standalone decoding and the half-width of the noise band around it.
type specPoint struct {
	shown          int
	speedup, noise float64
}

// printedResolution is the half-width of the band that prints as 1.00x: a speedup there breaks
// even whatever the measured spread.
const printedResolution = 0.005

// class is +1 when p is faster than standalone beyond its noise band (or the printed resolution,
// whichever is wider), -1 when slower beyond it, and 0 when it breaks even.
func (p specPoint) class() int {
	band := math.Max(p.noise, printedResolution)
	switch {
	case p.speedup > 1+band:
		return 1
	case p.speedup < 1-band:
		return -1
	}
	return 0
}

// speedupNoise is the half-width of the 95% Student-t interval of the mean speedup of paired
// runs (spec[i] / alone[i], each pair one prompt in one round, run side by side): the spread the
// measurement itself shows. Zero with fewer than two pairs, where nothing measures the spread.
func speedupNoise(alone, spec []float64) float64 {
	ratios := PairedRatios(spec, alone)
	n := float64(len(ratios))
	if n < 2 {
		return 0
	}
	t := distuv.StudentsT{Mu: 0, Sigma: 1, Nu: n - 1}.Quantile(0.975)
	return t * stat.StdDev(ratios, nil) / math.Sqrt(n)
}

// specVerdict summarises a drafter's rows in one line: the best speedup, and at which draft
// lengths speculation pays off, breaks even (within the noise band or printed as 1.00x) or is
// slower. Draft lengths are listed, never summarised as "up to K", since the classes need not
// be contiguous; only runs of three or more consecutive lengths are written as ranges.
func specVerdict(name, label string, pts []specPoint) string {
	if len(pts) == 0 {
		return fmt.Sprintf("%s: nothing measured", name)
	}
	best := pts[0]
	var pays, even, slower []int
	for _, p := range pts {
		if p.speedup > best.speedup {
			best = p
		}
		switch p.class() {
		case 1:
			pays = append(pays, p.shown)
		case 0:
			even = append(even, p.shown)
		default:
			slower = append(slower, p.shown)
		}
	}
	var parts []string
	switch {
	case len(pays) == len(pts):
		parts = append(parts, fmt.Sprintf("best %.2fx at %s=%d", best.speedup, label, best.shown), fmt.Sprintf("pays off at every %s measured", label))
	case len(pays) > 0:
		parts = append(parts, fmt.Sprintf("best %.2fx at %s=%d", best.speedup, label, best.shown), fmt.Sprintf("pays off at %s=%s", label, listLengths(pays)))
	default:
		parts = append(parts, fmt.Sprintf("pays off at no %s measured (best %.2fx at %s=%d)", label, best.speedup, label, best.shown))
	}
	if len(even) > 0 {
		parts = append(parts, fmt.Sprintf("breaks even at %s=%s", label, listLengths(even)))
	}
	if len(slower) > 0 {
		parts = append(parts, fmt.Sprintf("slower at %s=%s", label, listLengths(slower)))
	}
	return name + ": " + strings.Join(parts, "; ")
}

// listLengths writes ks (ascending) as a comma list, runs of three or more consecutive values
// as a range: 1,2,3,5,7,8 reads "1-3,5,7,8".
func listLengths(ks []int) string {
	var out []string
	for i := 0; i < len(ks); {
		j := i
		for j+1 < len(ks) && ks[j+1] == ks[j]+1 {
			j++
		}
		if j-i >= 2 {
			out = append(out, fmt.Sprintf("%d-%d", ks[i], ks[j]))
			i = j + 1
			continue
		}
		out = append(out, strconv.Itoa(ks[i]))
		i++
	}
	return strings.Join(out, ",")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func meanForward(r Result) float64 {
	var xs []float64
	for _, s := range r.Steps {
		xs = append(xs, s.ForwardMS+s.SampleMS)
	}
	return stat.Mean(xs, nil)
}
