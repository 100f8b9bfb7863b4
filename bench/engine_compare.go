package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// CompareOptions configures CompareEngines.
type CompareOptions struct {
	// Models are checkpoint directories.
	Models []string
	// DTypes are the compute dtypes compared on both sides (default f32).
	DTypes []string
	// Rounds per model and dtype, after one warm-up round per side.
	Rounds    int
	MaxTokens int
	Prompt    string
	// StopAtEOS makes both sides stop at an end-of-sequence token; by default neither does and
	// every round generates MaxTokens tokens on both sides.
	StopAtEOS bool
	// Root is the checkout with .venv (for the mlx-lm peer).
	Root string
	// Native adds a row per model with each side in its out-of-the-box dtype on this machine:
	// Hippo's default compute dtype, and mlx-lm's (the checkpoint's own, it converts nothing).
	Native bool
	// Layouts are Hippo's weight layouts to compare (model.ResolveLayout's values; default
	// "auto"), a row each; mlx-lm always keeps the stored layout.
	Layouts []string
}

// ComparisonRow is one line of the engine comparison.
type ComparisonRow struct {
	Model, HippoDType, PeerDType string
	// HippoLayout is how Hippo held its dense weights: "stored" ([out, in], as mlx-lm) or
	// "transposed" ([in, out]).
	HippoLayout string
	// Decode tok/s per round, both counted as mlx-lm's generation_tps: tokens generated (the
	// first included) over the time from the first token's arrival to the last's.
	Hippo, Peer []float64
	// Tokens generated per round on each side.
	HippoTokens, PeerTokens []int
	// PromptTokens is the prompt length both sides were given.
	PromptTokens int
	// BytesPerToken is the weight bytes one decode step reads in Hippo's dtype.
	BytesPerToken int64
}

// PairedRatios is Hippo's rate over mlx-lm's for each round. The two sides of a round run back
// to back, so a load change on a shared machine moves both; a ratio of means would mix rounds
// taken under different load.
func (r ComparisonRow) PairedRatios() []float64 { return PairedRatios(r.Hippo, r.Peer) }

// PairedRatios is a[i]/b[i] for each round both sides measured (rounds where b is zero are left
// out).
func PairedRatios(a, b []float64) []float64 {
	n := min(len(a), len(b))
	q := make([]float64, 0, n)
	for i := range n {
		if b[i] > 0 {
			q = append(q, a[i]/b[i])
		}
	}
	return q
}

// Ratio is the median of the per-round ratios (NaN with no rounds).
func (r ComparisonRow) Ratio() float64 {
	q := r.PairedRatios()
	if len(q) == 0 {
		return math.NaN()
	}
	return Median(q)
}

// Median is the middle value of x (the mean of the two middle ones for an even count); x is
// left as it was.
func Median(x []float64) float64 {
	x = slices.Clone(x)
	slices.Sort(x)
	n := len(x)
	if n%2 == 1 {
		return x[n/2]
	}
	return (x[n/2-1] + x[n/2]) / 2
}

// RatioRange is the lowest and highest per-round ratio.
func (r ComparisonRow) RatioRange() (lo, hi float64) {
	q := r.PairedRatios()
	if len(q) == 0 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(q), slices.Max(q)
}

// CompareEngines runs Hippo and mlx-lm alternately, round by round, on the same checkpoints,
// prompt and dtype, and writes a table of decode tok/s, their ratio and the roofline. Which side
// runs first alternates from round to round, so neither always inherits a warm (or busy) machine.
func CompareEngines(ctx context.Context, o CompareOptions, w io.Writer) ([]ComparisonRow, error) {
	if len(o.DTypes) == 0 {
		o.DTypes = []string{"f32"}
	}
	if len(o.Layouts) == 0 {
		o.Layouts = []string{"auto"}
	}
	if o.Rounds < 1 || o.MaxTokens < 2 {
		return nil, fmt.Errorf("bench engine: %d rounds of %d tokens: need at least 1 round of 2 tokens (decode tok/s starts at the first token)", o.Rounds, o.MaxTokens)
	}
	dev, err := engines.Device()
	if err != nil {
		return nil, err
	}
	var layouts []string
	for _, l := range o.Layouts {
		r, err := model.ResolveLayout(l, dev.GPU)
		if err != nil {
			return nil, fmt.Errorf("bench engine: %w", err)
		}
		if !slices.Contains(layouts, r) {
			layouts = append(layouts, r)
		}
	}
	peer, err := StartPeer(o.Root)
	if err != nil {
		return nil, err
	}
	defer peer.Close()
	var info struct {
		MLX    string `json:"mlx"`
		MLXLM  string `json:"mlx_lm"`
		Device string `json:"device"`
	}
	if err := peer.Call(map[string]any{"op": "info"}, &info); err != nil {
		return nil, err
	}
	bw, err := measureBandwidth(ctx)
	if err != nil {
		return nil, err
	}
	eos := "neither side stops at EOS (both generate exactly max tokens)"
	if o.StopAtEOS {
		eos = "both sides stop at EOS"
	}
	fmt.Fprintf(w, "hippo: MLX %s on %s, pipelined decode (step t+1 enqueued before token t is read); dense weights %s (see the layout column)\n", mlx.Version(), dev, strings.Join(layouts, " and "))
	fmt.Fprintf(w, "mlx-lm %s: MLX %s on %s, stream_generate (greedy, default sampler); dense weights stored: x times a transposed view of [out, in]\n", info.MLXLM, info.MLX, info.Device)
	fmt.Fprintf(w, "both: same checkpoint, prompt ids and compute dtype; %d tokens per round, %s; tok/s = tokens / (last token - first token), mlx-lm's generation_tps\n", o.MaxTokens, eos)
	fmt.Fprintf(w, "memory read bandwidth (MLX float32 vector-matrix product over a 512 MiB [in, out] matrix, best of 5): %.1f GB/s\n", bw/1e9)
	if lib := OpenBLAS(); lib != "" && !dev.GPU {
		// Hippo links OpenBLAS ahead of libmlx on Linux; the peer gets it preloaded.
		fmt.Fprintf(w, "BLAS: OpenBLAS on both sides (%s preloaded into mlx-lm)\n", lib)
	}
	fmt.Fprintln(w)
	var rows []ComparisonRow
	for _, m := range o.Models {
		type pair struct{ ours, theirs string }
		var pairs []pair
		for _, dt := range o.DTypes {
			pairs = append(pairs, pair{dt, dt})
		}
		if o.Native {
			pairs = append(pairs, pair{engines.DefaultDType(), ""})
		}
		for _, p := range pairs {
			for _, l := range layouts {
				row, err := compareOne(ctx, peer, m, p.ours, p.theirs, l, o, w)
				if err != nil {
					return rows, err
				}
				rows = append(rows, row)
				// A line per row as it completes, so a run cut short still reports what it measured.
				fmt.Fprintf(w, "%s %s %s: hippo %.1f tok/s, mlx-lm %.1f tok/s (median round ratio %.3fx)\n", filepath.Base(m), p.ours, l, stat.Mean(row.Hippo, nil), stat.Mean(row.Peer, nil), row.Ratio())
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\thippo dtype\tmlx-lm dtype\thippo weights\tprompt\ttokens (hippo/mlx-lm)\thippo tok/s\tmlx-lm tok/s\tratio (median of rounds)\tround ratios\tMB/token\troofline tok/s\thippo % of roofline\t")
	for _, r := range rows {
		hm, hs := stat.MeanStdDev(r.Hippo, nil)
		pm, ps := stat.MeanStdDev(r.Peer, nil)
		roof := bw / float64(r.BytesPerToken)
		peerDT := r.PeerDType
		if peerDT == "" {
			peerDT = "checkpoint"
		}
		lo, hi := r.RatioRange()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s/%s\t%.1f ± %.1f\t%.1f ± %.1f\t%.3fx\t%.2f-%.2fx\t%.1f\t%.1f\t%.0f%%\t\n",
			filepath.Base(r.Model), r.HippoDType, peerDT, r.HippoLayout, r.PromptTokens, spread(r.HippoTokens), spread(r.PeerTokens), hm, hs, pm, ps, r.Ratio(), lo, hi, float64(r.BytesPerToken)/1e6, roof, 100*hm/roof)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d rounds per row after a warm-up round per side, alternating which side runs first; ± is the standard deviation; ratio is the median over rounds of hippo/mlx-lm within a round (the two sides run back to back), round ratios their range.\n", o.Rounds)
	return rows, nil
}

// spread prints the range of token counts: "64" when all rounds agree, "50-64" otherwise.
func spread(n []int) string {
	if len(n) == 0 {
		return "-"
	}
	lo, hi := slices.Min(n), slices.Max(n)
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func compareOne(ctx context.Context, peer *Peer, dir, ours, theirs, layout string, o CompareOptions, w io.Writer) (ComparisonRow, error) {
	row := ComparisonRow{Model: dir, HippoDType: ours, PeerDType: theirs, HippoLayout: layout}
	// The loader reads the layout from the environment when it opens the checkpoint.
	prev, had := os.LookupEnv(model.LayoutEnv)
	os.Setenv(model.LayoutEnv, layout)
	e, err := engines.Open(ctx, engines.Options{Model: dir, DType: ours})
	if had {
		os.Setenv(model.LayoutEnv, prev)
	} else {
		os.Unsetenv(model.LayoutEnv)
	}
	if err != nil {
		return row, err
	}
	defer e.Close()
	row.BytesPerToken = engines.BytesPerToken(e.Config(), e.DType())
	ids, err := e.Prompt(o.Prompt, false)
	if err != nil {
		return row, err
	}
	// A synthetic checkpoint may have a smaller vocabulary than its tokenizer (deep-narrow):
	// fold the prompt's ids into it. Both sides get the same ids.
	if v := e.Config().VocabSize; slices.Max(ids) >= v {
		for i := range ids {
			ids[i] %= v
		}
		fmt.Fprintf(w, "%s: prompt ids folded into its vocabulary of %d\n", filepath.Base(dir), v)
	}
	row.PromptTokens = len(ids)
	req := map[string]any{"op": "bench", "model": dir, "prompt_ids": ids, "max_tokens": o.MaxTokens, "rounds": 1, "ignore_eos": !o.StopAtEOS}
	if theirs != "" {
		req["dtype"] = theirs
	}
	ourRound := func() (float64, int, error) {
		st, err := e.Generate(ctx, engines.Request{Tokens: ids, MaxTokens: o.MaxTokens, IgnoreEOS: !o.StopAtEOS}, func(engines.Token) error { return nil })
		if err != nil {
			return 0, 0, err
		}
		if len(st.Tokens) < 2 {
			return 0, len(st.Tokens), fmt.Errorf("bench engine: %s stopped after %d token: no decode to time (try without --stop-at-eos)", filepath.Base(dir), len(st.Tokens))
		}
		return DecodeTokS(st), len(st.Tokens), nil
	}
	peerRound := func() (float64, int, error) {
		var resp struct {
			DecodeTokS []float64 `json:"decode_tok_s"`
			Tokens     []int     `json:"tokens"`
		}
		if err := peer.Call(req, &resp); err != nil {
			return 0, 0, err
		}
		if len(resp.DecodeTokS) != 1 || len(resp.Tokens) != 1 {
			return 0, 0, fmt.Errorf("mlx-lm peer: %d rates and %d token counts for one round", len(resp.DecodeTokS), len(resp.Tokens))
		}
		return resp.DecodeTokS[0], resp.Tokens[0], nil
	}
	for round := -1; round < o.Rounds; round++ { // round -1 warms both sides up
		if err := ctx.Err(); err != nil {
			return row, err
		}
		sides := []func() (float64, int, error){ourRound, peerRound}
		if round%2 != 0 { // odd rounds (and the warm-up) let mlx-lm go first
			sides[0], sides[1] = sides[1], sides[0]
		}
		var rate [2]float64
		var toks [2]int
		for i, side := range sides {
			var err error
			if rate[i], toks[i], err = side(); err != nil {
				return row, err
			}
		}
		if round%2 != 0 {
			rate[0], rate[1] = rate[1], rate[0]
			toks[0], toks[1] = toks[1], toks[0]
		}
		if round < 0 {
			continue
		}
		row.Hippo = append(row.Hippo, rate[0])
		row.Peer = append(row.Peer, rate[1])
		row.HippoTokens = append(row.HippoTokens, toks[0])
		row.PeerTokens = append(row.PeerTokens, toks[1])
	}
	return row, nil
}

// measureBandwidth times a float32 matrix-vector product over a 512 MiB matrix, the operation a
// decode step is made of: it reads every weight once, so bytes/time is the read bandwidth that
// MLX's BLAS reaches here, the ceiling for decode.
func measureBandwidth(ctx context.Context) (float64, error) {
	w := mlx.NewWorker()
	defer w.Close()
	var best time.Duration
	const n = 128 << 20 // float32 elements: 512 MiB
	err := w.Do(ctx, func() error {
		s := mlx.NewScope()
		defer s.Close()
		const cols = 4096
		// x [1, rows] times W [rows, cols]: the layout in which MLX's CPU BLAS reads the matrix
		// once without repacking it (model.WeightLayout), so the fastest a decode step can go.
		m := mlx.Full(1, mlx.Float32, n/cols, cols)
		v := mlx.Full(1, mlx.Float32, 1, n/cols)
		if err := mlx.Eval(m, v); err != nil {
			return err
		}
		for i := 0; i < 5; i++ {
			sc := mlx.NewScope()
			t := time.Now()
			if err := mlx.Eval(mlx.Matmul(v, m)); err != nil {
				sc.Close()
				return err
			}
			d := time.Since(t)
			sc.Close()
			if best == 0 || d < best {
				best = d
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return float64(4*n) / best.Seconds(), nil
}
