package bench

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"gonum.org/v1/gonum/stat"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
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
	// Root is the checkout with .venv (for the mlx-lm peer).
	Root string
	// Native adds a row per model with each side in its out-of-the-box dtype on this machine:
	// Hippo's default compute dtype, and mlx-lm's (the checkpoint's own, it converts nothing).
	Native bool
}

// ComparisonRow is one line of the engine comparison.
type ComparisonRow struct {
	Model, HippoDType, PeerDType string
	Hippo, Peer                  []float64 // decode tok/s per round
	// BytesPerToken is the weight bytes one decode step reads in Hippo's dtype.
	BytesPerToken int64
}

// Ratio is the mean of Hippo's rounds over the mean of mlx-lm's.
func (r ComparisonRow) Ratio() float64 { return stat.Mean(r.Hippo, nil) / stat.Mean(r.Peer, nil) }

// CompareEngines runs Hippo and mlx-lm alternately, round by round, on the same checkpoints,
// prompt and dtype, and writes a table of decode tok/s, their ratio and the roofline.
func CompareEngines(ctx context.Context, o CompareOptions, w io.Writer) ([]ComparisonRow, error) {
	if len(o.DTypes) == 0 {
		o.DTypes = []string{"f32"}
	}
	peer, err := StartPeer(o.Root)
	if err != nil {
		return nil, err
	}
	defer peer.Close()
	bw, err := measureBandwidth(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "memory read bandwidth (MLX float32 matrix-vector product over 512 MiB, best of 5): %.1f GB/s\n", bw/1e9)
	fmt.Fprintf(w, "BLAS: OpenBLAS on both sides (%s preloaded into mlx-lm)\n\n", OpenBLAS())
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
			row, err := compareOne(ctx, peer, m, p.ours, p.theirs, o)
			if err != nil {
				return rows, err
			}
			rows = append(rows, row)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\thippo dtype\tmlx-lm dtype\thippo tok/s\tmlx-lm tok/s\tratio\tMB/token\troofline tok/s\thippo % of roofline\t")
	for _, r := range rows {
		hm, hs := stat.MeanStdDev(r.Hippo, nil)
		pm, ps := stat.MeanStdDev(r.Peer, nil)
		roof := bw / float64(r.BytesPerToken)
		peerDT := r.PeerDType
		if peerDT == "" {
			peerDT = "checkpoint"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f ± %.1f\t%.1f ± %.1f\t%.3fx\t%.1f\t%.1f\t%.0f%%\t\n",
			r.Model, r.HippoDType, peerDT, hm, hs, pm, ps, r.Ratio(), float64(r.BytesPerToken)/1e6, roof, 100*hm/roof)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d rounds per row after a warm-up, alternating hippo and mlx-lm; %d tokens per round; ± is the standard deviation.\n", o.Rounds, o.MaxTokens)
	return rows, nil
}

func compareOne(ctx context.Context, peer *Peer, dir, ours, theirs string, o CompareOptions) (ComparisonRow, error) {
	row := ComparisonRow{Model: dir, HippoDType: ours, PeerDType: theirs}
	e, err := engines.Open(ctx, engines.Options{Model: dir, DType: ours})
	if err != nil {
		return row, err
	}
	defer e.Close()
	row.BytesPerToken = engines.BytesPerToken(e.Config(), e.DType())
	ids, err := e.Prompt(o.Prompt, false)
	if err != nil {
		return row, err
	}
	req := map[string]any{"op": "bench", "model": dir, "prompt_ids": ids, "max_tokens": o.MaxTokens, "rounds": 1}
	if theirs != "" {
		req["dtype"] = theirs
	}
	for round := -1; round < o.Rounds; round++ { // round -1 warms both sides up
		if err := ctx.Err(); err != nil {
			return row, err
		}
		st, err := e.Generate(ctx, engines.Request{Tokens: ids, MaxTokens: o.MaxTokens, IgnoreEOS: true}, func(engines.Token) error { return nil })
		if err != nil {
			return row, err
		}
		var resp struct {
			DecodeTokS []float64 `json:"decode_tok_s"`
		}
		if err := peer.Call(req, &resp); err != nil {
			return row, err
		}
		if round < 0 {
			continue
		}
		row.Hippo = append(row.Hippo, float64(len(st.Steps))/st.Decode.Seconds())
		row.Peer = append(row.Peer, resp.DecodeTokS...)
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
		// x [1, cols] times W^T with W [rows, cols], as a Linear layer runs in decode.
		m := mlx.Transpose(mlx.Full(1, mlx.Float32, n/cols, cols), 1, 0)
		v := mlx.Full(1, mlx.Float32, 1, cols)
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
