package bench

import (
	"math"
	"testing"
)

func TestAcceptanceRate(t *testing.T) {
	geom := func(a float64, k int) []float64 {
		var r []float64
		for i := 1; i <= k; i++ {
			r = append(r, math.Pow(a, float64(i)))
		}
		return r
	}
	tests := []struct {
		name  string
		byPos [][]float64
		steps []int
		want  float64
	}{
		// Drafts kept with probability a each, given the earlier ones were: a is recovered at
		// every K, where kept / drafted would read (a - a^(K+1)) / ((1 - a) K): 0.125 at K = 7.
		{"geometric K=7", [][]float64{geom(0.5, 7)}, []int{10}, 0.5},
		{"geometric, two K pooled", [][]float64{geom(0.3, 3), geom(0.3, 15)}, []int{40, 7}, 0.3},
		// Every step keeps position 1 and rejects position 2: 1 kept, 1 failed a step.
		{"one kept a step", [][]float64{{1, 0, 0}}, []int{5}, 0.5},
		{"all kept", [][]float64{{1, 1}}, []int{3}, 1},
		{"none kept", [][]float64{{0, 0, 0}}, []int{3}, 0},
		{"no steps", [][]float64{{0.5}}, []int{0}, math.NaN()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AcceptanceRate(tt.byPos, tt.steps)
			if math.IsNaN(tt.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tt.want) > 1e-12) {
				t.Errorf("AcceptanceRate(%v, %v) = %v; want %v", tt.byPos, tt.steps, got, tt.want)
			}
		})
	}
}

func TestExpectedTokens(t *testing.T) {
	tests := []struct {
		a    float64
		k    int
		want float64
	}{
		{0.5, 1, 1.5},
		{0.5, 3, 1.875},
		{1, 7, 8},
		{0, 15, 1},
	}
	for _, tt := range tests {
		if got := ExpectedTokens(tt.a, tt.k); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("ExpectedTokens(%v, %d) = %v; want %v", tt.a, tt.k, got, tt.want)
		}
	}
}
