package bench

import (
	"math"
	"testing"
)

func TestComparisonRowRatio(t *testing.T) {
	tests := []struct {
		name         string
		hippo, peer  []float64
		want, lo, hi float64
	}{
		// One round taken while the machine was busy (both sides slow) must not pull the ratio:
		// the ratio of means would be 23/21.
		{"load drift", []float64{10, 3, 10}, []float64{10, 1, 10}, 1, 1, 3},
		{"even rounds", []float64{4, 6}, []float64{2, 2}, 2.5, 2, 3},
		{"unequal lengths use the paired rounds", []float64{2, 2, 9}, []float64{1, 1}, 2, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ComparisonRow{Hippo: tt.hippo, Peer: tt.peer}
			if got := r.Ratio(); math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("Ratio() = %v, want %v", got, tt.want)
			}
			if lo, hi := r.RatioRange(); lo != tt.lo || hi != tt.hi {
				t.Errorf("RatioRange() = %v, %v, want %v, %v", lo, hi, tt.lo, tt.hi)
			}
		})
	}
	if got := (ComparisonRow{}).Ratio(); !math.IsNaN(got) {
		t.Errorf("Ratio() of no rounds = %v, want NaN", got)
	}
}
