// Package pipeline runs a model split into contiguous layer ranges across processes or machines:
// the driver (stage 0) embeds tokens and runs the decode loop, hidden states go stage to stage
// over the transport, and the last stage applies the head and samples. Every step is attributed:
// each stage's own forward time, the time on the wire, and bytes.
package pipeline

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/hippo-bench/hippo/engines/model"
)

// ParseSplit reads "0:14,14:28" into ranges and checks that they tile [0, layers).
func ParseSplit(s string, layers int) ([]model.Range, error) {
	var rs []model.Range
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), ":")
		from, err1 := strconv.Atoi(a)
		to, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("split %q: each stage is FROM:TO, e.g. 0:14,14:28", s)
		}
		rs = append(rs, model.Range{From: from, To: to})
	}
	return rs, checkSplit(rs, layers)
}

func checkSplit(rs []model.Range, layers int) error {
	if len(rs) < 2 {
		return fmt.Errorf("split has %d stage(s): a pipeline needs at least 2", len(rs))
	}
	next := 0
	for i, r := range rs {
		if r.From != next || r.To <= r.From {
			return fmt.Errorf("split: stage %d is [%d,%d) but must start at layer %d and hold at least one layer", i, r.From, r.To, next)
		}
		next = r.To
	}
	if next != layers {
		return fmt.Errorf("split ends at layer %d but the model has %d layers", next, layers)
	}
	return nil
}

// FormatSplit is the inverse of ParseSplit.
func FormatSplit(rs []model.Range) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%d:%d", r.From, r.To)
	}
	return strings.Join(parts, ",")
}
