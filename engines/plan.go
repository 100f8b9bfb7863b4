package engines

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// PlanOptions describes a deployment to size. The zero value of each optional field picks a
// default.
type PlanOptions struct {
	// Target is the model to run; Draft the draft model for speculative decoding (nil: no
	// speculative plan).
	Target, Draft *model.Config
	// DType is the compute dtype.
	DType mlx.DType
	// Context is the prompt + generation length the KV cache must hold (default 4096).
	Context int
	// RAM is the memory of each machine, in bytes (required).
	RAM int64
	// Stages is the number of machines of the pipeline plan (default 2).
	Stages int
}

// Plan is one way to run a model and what each machine needs for it.
type Plan struct {
	// Mode is standalone, pipeline or spec.
	Mode     string    `json:"mode"`
	Machines []Machine `json:"machines"`
	// Split is the pipeline's layer ranges in --split syntax ("0:24,24:48"); empty otherwise.
	Split string `json:"split,omitempty"`
	// Fits reports whether every machine stays within RAM x SafetyFactor.
	Fits bool `json:"fits"`
	// Advice says what to do when the plan does not fit (and is empty when it does).
	Advice string `json:"advice,omitempty"`
}

// Machine is the memory one machine of a plan needs.
type Machine struct {
	// Role says what runs there: "whole model", "layers 0-23 + embeddings", "target + draft".
	Role     string `json:"role"`
	Weights  int64  `json:"weights_bytes"`
	KVCache  int64  `json:"kv_cache_bytes"`
	Overhead int64  `json:"runtime_bytes"`
	// Usable is the machine's RAM times SafetyFactor.
	Usable int64 `json:"usable_bytes"`
}

// Total is what the machine needs.
func (m Machine) Total() int64 { return m.Weights + m.KVCache + m.Overhead }

// Margin is what is left of the usable memory (negative when it does not fit).
func (m Machine) Margin() int64 { return m.Usable - m.Total() }

// PlanDeployments sizes the standalone, pipeline and (with a draft) speculative plans of o.
func PlanDeployments(o PlanOptions) ([]Plan, error) {
	if o.Target == nil {
		return nil, errors.New("engines: plan: no target model")
	}
	if o.RAM <= 0 {
		return nil, fmt.Errorf("engines: plan: RAM %d: must be positive", o.RAM)
	}
	if o.Context == 0 {
		o.Context = 4096
	}
	if o.Context < 0 {
		return nil, fmt.Errorf("engines: plan: context %d: must be positive", o.Context)
	}
	if o.Stages == 0 {
		o.Stages = 2
	}
	usable := int64(float64(o.RAM) * SafetyFactor)
	c, dt, ctx := o.Target, o.DType, o.Context

	est := EstimateMemory(c, dt, ctx)
	standalone := Plan{Mode: "standalone", Machines: []Machine{{
		Role: "whole model", Weights: est.Weights, KVCache: est.KVCache, Overhead: est.Overhead, Usable: usable,
	}}}
	plans := []Plan{standalone}

	pipe, err := planPipeline(c, dt, ctx, usable, o.Stages)
	if err != nil {
		return nil, err
	}
	plans = append(plans, pipe)

	if o.Draft != nil {
		sp := SpecMemory(c, o.Draft, dt, ctx)
		plans = append(plans, Plan{Mode: "spec", Machines: []Machine{{
			Role: "target + draft", Weights: sp.Weights, KVCache: sp.KVCache, Overhead: sp.Overhead, Usable: usable,
		}}})
	}
	for i := range plans {
		p := &plans[i]
		p.Fits = true
		for _, m := range p.Machines {
			p.Fits = p.Fits && m.Margin() >= 0
		}
		if !p.Fits {
			p.Advice = advise(*p, o, usable)
		}
	}
	return plans, nil
}

// planPipeline splits c's layers into stages contiguous ranges that balance each machine's bytes
// (weights and KV cache; the first stage also holds the embeddings, the last the head, which for
// tied embeddings is the embedding table again).
func planPipeline(c *model.Config, dt mlx.DType, ctx int, usable int64, stages int) (Plan, error) {
	if stages < 2 || stages > c.NumLayers {
		return Plan{}, fmt.Errorf("engines: plan: %d pipeline stages for %d layers: use 2 to %d", stages, c.NumLayers, c.NumLayers)
	}
	p := weightParts(c, dt)
	headBytes := p.head
	if c.Tied() {
		headBytes += p.embed
	}
	layer := make([]int64, c.NumLayers)
	for i := range layer {
		layer[i] = p.layer + LayerKVBytes(c, dt, ctx, i)
	}
	extra := func(stage int) int64 {
		var b int64
		if stage == 0 {
			b += p.embed
		}
		if stage == stages-1 {
			b += headBytes
		}
		return b
	}
	ranges := BalanceBytes(layer, stages, extra)
	over := overhead(c, dt, ctx)
	plan := Plan{Mode: "pipeline"}
	var split []string
	for s, r := range ranges {
		m := Machine{Overhead: over, Usable: usable, Weights: extra(s)}
		for i := r.From; i < r.To; i++ {
			m.Weights += p.layer
			m.KVCache += LayerKVBytes(c, dt, ctx, i)
		}
		role := fmt.Sprintf("layers %d-%d", r.From, r.To-1)
		switch {
		case s == 0:
			role += " + embeddings"
		case s == stages-1 && c.Tied():
			role += " + head (tied embeddings)"
		case s == stages-1:
			role += " + head"
		}
		m.Role = role
		plan.Machines = append(plan.Machines, m)
		split = append(split, fmt.Sprintf("%d:%d", r.From, r.To))
	}
	plan.Split = strings.Join(split, ",")
	return plan, nil
}

// BalanceBytes splits layers (their bytes) into stages contiguous ranges minimising the largest
// stage, counting extra(s) on stage s. Ties go to the earliest split found, so the result is
// deterministic.
func BalanceBytes(layer []int64, stages int, extra func(int) int64) []model.Range {
	return balance(layer, stages, func(s int, bytes int64) float64 { return float64(bytes + extra(s)) },
		func(acc, cost float64) float64 { return max(acc, cost) })
}

// BalanceWeighted splits layers (their bytes) into len(capacity) contiguous ranges in
// proportion to each stage's capacity: it minimises the sum over stages of load^2 / capacity,
// where a stage's load is its layers plus extra(s), whose minimum has every load proportional
// to its capacity (as far as whole layers allow). Every capacity must be positive, and there
// must be at least as many layers as stages. Ties go to the earliest split found, so the
// result is deterministic.
func BalanceWeighted(layer []int64, capacity []int64, extra func(int) int64) []model.Range {
	return balance(layer, len(capacity), func(s int, bytes int64) float64 {
		load := float64(bytes + extra(s))
		return load * load / float64(capacity[s])
	}, func(acc, cost float64) float64 { return acc + cost })
}

// balance splits layers into stages contiguous non-empty ranges minimising the combination (by
// combine, which must be monotone) of every stage's cost(s, bytes of its layers), by dynamic
// programming over the split points.
func balance(layer []int64, stages int, cost func(s int, bytes int64) float64, combine func(acc, cost float64) float64) []model.Range {
	n := len(layer)
	prefix := make([]int64, n+1)
	for i, b := range layer {
		prefix[i+1] = prefix[i] + b
	}
	inf := math.Inf(1)
	// best[s][j]: the best combined cost when stages 0..s-1 hold layers [0, j).
	best := make([][]float64, stages+1)
	from := make([][]int, stages+1)
	for s := range best {
		best[s] = make([]float64, n+1)
		from[s] = make([]int, n+1)
		for j := range best[s] {
			best[s][j] = inf
		}
	}
	best[0][0] = 0
	for s := 1; s <= stages; s++ {
		for j := s; j <= n-(stages-s); j++ {
			for i := s - 1; i < j; i++ {
				if best[s-1][i] == inf {
					continue
				}
				c := combine(best[s-1][i], cost(s-1, prefix[j]-prefix[i]))
				if c < best[s][j] {
					best[s][j], from[s][j] = c, i
				}
			}
		}
	}
	rs := make([]model.Range, stages)
	for s, j := stages, n; s > 0; s-- {
		i := from[s][j]
		rs[s-1] = model.Range{From: i, To: j}
		j = i
	}
	return rs
}

// SplitByMemory splits c's layers over len(free) pipeline stages in proportion to the memory
// each one offers (free[s] bytes, minus the runtime and activations every stage needs anyway):
// contiguous ranges whose weights and KV cache for context positions fill about the same share
// of every stage's memory. It refuses, naming the stage, an offer that cannot hold even one
// layer, and a split in which some stage would not fit what it offers.
func SplitByMemory(c *model.Config, dt mlx.DType, context int, free []int64) ([]model.Range, error) {
	stages := len(free)
	if stages < 2 || stages > c.NumLayers {
		return nil, fmt.Errorf("engines: split: %d pipeline stages for %d layers: use 2 to %d", stages, c.NumLayers, c.NumLayers)
	}
	p := weightParts(c, dt)
	headBytes := p.head
	if c.Tied() {
		headBytes += p.embed
	}
	extra := func(stage int) int64 {
		var b int64
		if stage == 0 {
			b += p.embed
		}
		if stage == stages-1 {
			b += headBytes
		}
		return b
	}
	layer := make([]int64, c.NumLayers)
	smallest := int64(math.MaxInt64)
	for i := range layer {
		layer[i] = p.layer + LayerKVBytes(c, dt, context, i)
		smallest = min(smallest, layer[i])
	}
	over := overhead(c, dt, context)
	capacity := make([]int64, stages)
	for s, f := range free {
		need := over + smallest + extra(s)
		if f < need {
			return nil, fmt.Errorf("%w: stage %d offers %s, less than its smallest share needs (one layer with a KV cache for %d positions, %s, plus runtime %s%s): free memory on that machine, leave it out of the pipeline, or plan a shorter context",
				ErrMemory, s, FormatBytes(f), context, FormatBytes(smallest), FormatBytes(over), extraNote(extra(s)))
		}
		capacity[s] = f - over
	}
	rs := BalanceWeighted(layer, capacity, extra)
	if !fitsMemory(c, dt, context, rs, free) {
		// Whole layers can leave the proportional split just over some stage's memory, where
		// the split that minimises the fullest stage's share may still fit.
		rs = balance(layer, stages, func(s int, bytes int64) float64 { return float64(bytes+extra(s)) / float64(capacity[s]) },
			func(acc, cost float64) float64 { return max(acc, cost) })
	}
	for s, r := range rs {
		if e := StageMemory(c, dt, r, context); e.Total() > free[s] {
			return rs, fmt.Errorf("%w: the stages offer %s in all, and stage %d would need %s for layers [%d,%d) but offers %s: free memory, add a machine, use a quantized checkpoint or plan a shorter context",
				ErrMemory, FormatBytes(sum(free)), s, FormatBytes(e.Total()), r.From, r.To, FormatBytes(free[s]))
		}
	}
	return rs, nil
}

func fitsMemory(c *model.Config, dt mlx.DType, context int, rs []model.Range, free []int64) bool {
	for s, r := range rs {
		if StageMemory(c, dt, r, context).Total() > free[s] {
			return false
		}
	}
	return true
}

func extraNote(b int64) string {
	if b == 0 {
		return ""
	}
	return ", plus embeddings or head " + FormatBytes(b)
}

func sum(xs []int64) int64 {
	var t int64
	for _, x := range xs {
		t += x
	}
	return t
}

// advise says what would make a plan fit.
func advise(p Plan, o PlanOptions, usable int64) string {
	var worst Machine
	for _, m := range p.Machines {
		if m.Margin() < worst.Margin() || worst.Usable == 0 {
			worst = m
		}
	}
	short := FormatBytes(-worst.Margin())
	var tips []string
	if o.DType == mlx.Float32 {
		tips = append(tips, "compute in bf16 (--dtype bf16 halves float32 weights)")
	}
	if o.Target.Quantization == nil {
		tips = append(tips, "use a 4-bit checkpoint (--bits 4)")
	}
	switch p.Mode {
	case "standalone", "spec":
		for n := 2; n <= min(o.Target.NumLayers, 8); n++ {
			if pp, err := planPipeline(o.Target, o.DType, o.Context, usable, n); err == nil && allFit(pp) {
				tips = append(tips, fmt.Sprintf("split it over %d machines (--mode pipeline --stages %d)", n, n))
				break
			}
		}
	case "pipeline":
		for n := len(p.Machines) + 1; n <= min(o.Target.NumLayers, 8); n++ {
			if pp, err := planPipeline(o.Target, o.DType, o.Context, usable, n); err == nil && allFit(pp) {
				tips = append(tips, fmt.Sprintf("use %d machines", n))
				break
			}
		}
	}
	if p.Mode == "spec" {
		tips = append(tips, "pick a smaller draft (--draft), or a drafter without weights (--drafter lookup)")
	}
	if worst.KVCache > worst.Usable/4 {
		tips = append(tips, "plan for a shorter --context")
	}
	return fmt.Sprintf("%s is %s short: %s", worst.Role, short, strings.Join(tips, "; or "))
}

func allFit(p Plan) bool {
	for _, m := range p.Machines {
		if m.Margin() < 0 {
			return false
		}
	}
	return true
}
