package bench

import (
	"strings"
	"testing"
)

func TestFirstDifference(t *testing.T) {
	for _, tc := range []struct {
		a, b []int
		want int
	}{
		{[]int{1, 2, 3}, []int{1, 2, 3}, -1},
		{[]int{}, []int{}, -1},
		{[]int{1, 2, 3}, []int{1, 5, 3}, 1},
		{[]int{1, 2}, []int{1, 2, 3}, 2},
		{[]int{4}, []int{}, 0},
	} {
		if got := firstDifference(tc.a, tc.b); got != tc.want {
			t.Errorf("firstDifference(%v, %v) = %d; want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestDivergences: a run that parts from its reference stops the benchmark with where it parted
// and what to do (on a GPU: f32, or the flag), unless the flag allows it; then the footer counts it.
func TestDivergences(t *testing.T) {
	ref, same, parted := []int{7, 8, 9, 10}, []int{7, 8, 9, 10}, []int{7, 8, 11, 12}

	strict := &divergences{gpu: true, flag: "--allow-divergence"}
	if err := strict.check("run A", ref, same, "bfloat16"); err != nil {
		t.Fatalf("equal tokens: %v", err)
	}
	err := strict.check("run B", ref, parted, "bfloat16")
	if err == nil {
		t.Fatal("parted tokens passed the check")
	}
	for _, want := range []string{"run B", "generated token 2", "token 11 instead of token 9", "bfloat16", "--dtype f32", "--allow-divergence"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	cpu := &divergences{flag: "--allow-divergence"}
	if err := cpu.check("run C", ref, parted, "float32"); err == nil || !strings.Contains(err.Error(), "CPU backend") || strings.Contains(err.Error(), "--allow-divergence") {
		t.Errorf("on the CPU: %v; want a report-it error without the flag's advice", err)
	}

	lax := &divergences{allow: true, gpu: true, flag: "--allow-divergence"}
	if s := lax.summary(); !strings.Contains(s, "every speculative output checked equal") {
		t.Errorf("nothing compared yet: %q", s)
	}
	for _, got := range [][]int{same, parted, {7, 8, 9}} {
		if err := lax.check("run", ref, got, "bfloat16"); err != nil {
			t.Fatalf("allowed: %v", err)
		}
	}
	if s := lax.summary(); !strings.Contains(s, "2 of 3 runs") || !strings.Contains(s, "first at generated token 2 to 3") {
		t.Errorf("summary %q; want 2 of 3 runs parted, at tokens 2 to 3", s)
	}
}
