package bench

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// divergences checks that each speculative run made the same greedy tokens as its reference run
// (standalone decoding, or the plain pipeline) and, where the caller allows runs to part, counts
// them. On the CPU backend they never part (the parity tests). On a GPU, a verify forward over
// several tokens and a one-token decode step run different kernels (MLX's CUDA backend: a
// quantized matrix-vector kernel for one row, a matrix-matrix one for several), whose rounding
// can turn a near-tie the other way; in bf16 that happens within tens of tokens.
type divergences struct {
	allow bool
	gpu   bool   // the benchmark computes on a GPU (for the advice in the error)
	flag  string // the command's flag that allows runs to part
	runs  int
	at    []int // where each parted run first differs from its reference, in generated tokens
}

func newDivergences(allow bool, flag string) *divergences {
	dev, _ := mlx.DefaultDevice()
	return &divergences{allow: allow, gpu: dev.GPU, flag: flag}
}

// check compares a run's tokens with its reference's. what names the run ("dflash B=4 on
// \"prompt\"") and dtype the compute dtype ("" for the device's default).
func (d *divergences) check(what string, ref, got []int, dtype string) error {
	d.runs++
	i := firstDifference(ref, got)
	if i < 0 {
		return nil
	}
	if d.allow {
		d.at = append(d.at, i)
		return nil
	}
	why := "on the CPU backend this must not happen: report it with the command and the prompt"
	if d.gpu {
		why = fmt.Sprintf("on a GPU a verify forward over several tokens and a one-token step run different kernels, "+
			"whose rounding can turn a near-tie the other way (%s compute): measure in f32 (--dtype f32), "+
			"or pass %s to measure anyway and count the runs that part", cmp.Or(dtype, "default"), d.flag)
	}
	return fmt.Errorf("%s: the speculative output parts from the reference at generated token %d (%s instead of %s); greedy decoding must make the same tokens; %s",
		what, i, tokenAt(got, i), tokenAt(ref, i), why)
}

// summary is the footer's account of the comparison.
func (d *divergences) summary() string {
	if len(d.at) == 0 {
		return "every speculative output checked equal to its reference's"
	}
	return fmt.Sprintf("speculative outputs parted from their reference's in %d of %d runs (%s allowed it), first at generated token %d to %d; their speeds are counted all the same",
		len(d.at), d.runs, d.flag, slices.Min(d.at), slices.Max(d.at))
}

// firstDifference is the first index where a and b differ (a shorter one differs where it ends),
// or -1 when they are equal.
func firstDifference(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func tokenAt(ts []int, i int) string {
	if i < len(ts) {
		return fmt.Sprintf("token %d", ts[i])
	}
	return "the end"
}
