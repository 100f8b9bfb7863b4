package pipeline

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/engines/model"
)

func TestParseSplit(t *testing.T) {
	cases := []struct {
		name   string
		split  string
		layers int
		want   []model.Range
		err    string
	}{
		{"even", "0:14,14:28", 28, []model.Range{{From: 0, To: 14}, {From: 14, To: 28}}, ""},
		{"three uneven", "0:1,1:3,3:4", 4, []model.Range{{From: 0, To: 1}, {From: 1, To: 3}, {From: 3, To: 4}}, ""},
		{"gap", "0:10,12:28", 28, nil, "must start at layer 10"},
		{"short", "0:10,10:20", 28, nil, "model has 28 layers"},
		{"one stage", "0:28", 28, nil, "at least 2"},
		{"garbage", "0-14,14-28", 28, nil, "FROM:TO"},
		{"empty stage", "0:0,0:28", 28, nil, "at least one layer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSplit(tc.split, tc.layers)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseSplit(%q) error = %v; want one containing %q", tc.split, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ParseSplit(%q) mismatch (-want +got):\n%s", tc.split, d)
			}
			if back := FormatSplit(got); back != tc.split {
				t.Errorf("FormatSplit = %q; want %q", back, tc.split)
			}
		})
	}
}
