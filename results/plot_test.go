package results

import (
	"testing"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
)

// TestLegendHeadroom checks that the Y range left above the data holds the legend's rows, that a
// plot without a legend keeps its range, and that a very long legend still leaves the data a
// part of the plot.
func TestLegendHeadroom(t *testing.T) {
	const h = 5 * vg.Inch
	tests := []struct {
		name    string
		entries int
	}{
		{"none", 0},
		{"one", 1},
		{"six", 6},
		{"forty", 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plot.New()
			p.Y.Min, p.Y.Max = 0, 1.2
			legendHeadroom(p, tt.entries, h)
			above := (p.Y.Max - 1.2) / (p.Y.Max - p.Y.Min) // share of the range above the data
			need := float64(vg.Length(tt.entries) * p.Legend.TextStyle.Font.Size * 1.2 / (h - vg.Inch))
			switch {
			case tt.entries == 0 && p.Y.Max != 1.2:
				t.Errorf("Y.Max = %v with no legend; want 1.2 unchanged", p.Y.Max)
			case need < 0.7 && above < need:
				t.Errorf("Y.Max = %v leaves %.2f of the range above the data; the legend of %d needs %.2f", p.Y.Max, above, tt.entries, need)
			case above > 0.7+1e-9:
				t.Errorf("Y.Max = %v leaves the data only %.2f of the range; want at least 0.3", p.Y.Max, 1-above)
			}
		})
	}
}
