package bench

import (
	"context"
	"strings"
	"testing"
)

// TestNewDrafterErrors checks that drafter configurations that cannot run say why, before any
// checkpoint is opened.
func TestNewDrafterErrors(t *testing.T) {
	cases := []struct {
		name, drafter, draft string
		message              string
	}{
		{"dflash without a draft", "dflash", "", "needs a DFlash draft checkpoint"},
		{"dflash without a target engine", "dflash", "/nonexistent", "give it the target engine"},
		{"model without a draft", "model", "", "needs a draft checkpoint"},
		{"unknown", "medusa", "", `unknown drafter "medusa"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := NewDrafter(context.Background(), tc.drafter, tc.draft, "", nil)
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("NewDrafter(%q, %q) error = %v; want it to mention %q", tc.drafter, tc.draft, err, tc.message)
			}
		})
	}
}
