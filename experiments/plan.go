package experiments

import (
	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/results"
)

// Run is one scheduled execution of a configuration on one prompt.
type Run struct {
	// ID is results.RecordID(Config, Repeat, Warmup): stable across invocations, so --resume can
	// tell which runs are done.
	ID     string
	Config bench.Config
	Repeat int
	Warmup bool
	// Group numbers consecutive runs that can share a loaded engine: same model, stages,
	// transport, link and dtype, and the same mode and drafter except that standalone and spec
	// runs of a model share one (see groupKey).
	Group int
}

// Plan returns every run of the sweep in execution order. Runs sharing an engine form a group;
// a group starts with its warm-up runs (each configuration Warmup times, on the first prompt),
// then repeat r of every configuration and prompt is run before repeat r+1 of any, and within a
// repeat every configuration runs a prompt before any runs the next, so that the configurations
// being compared (standalone and spec, say) alternate and slow drift (thermal, background load)
// spreads evenly over them.
func (s *Sweep) Plan() []Run {
	var out []Run
	group := -1
	for i := 0; i < len(s.configs); {
		j := i
		g := groupKey(s.configs[i])
		for j < len(s.configs) && groupKey(s.configs[j]) == g {
			j++
		}
		group++
		cfgs := s.configs[i:j]
		for w := range s.Warmup {
			for _, c := range cfgs {
				c.Prompt = s.Prompts[0]
				out = append(out, Run{ID: results.RecordID(c, w, true), Config: c, Repeat: w, Warmup: true, Group: group})
			}
		}
		for r := range s.Repeats {
			for _, pr := range s.Prompts {
				for _, c := range cfgs {
					c.Prompt = pr
					out = append(out, Run{ID: results.RecordID(c, r, false), Config: c, Repeat: r, Group: group})
				}
			}
		}
		i = j
	}
	return out
}

// pending drops the runs of plan that done (successful measured ids) already holds. A group whose
// measured runs are all done is dropped whole; otherwise its warm-ups run again before what remains
// of it, because this process starts with a cold engine. Warm-up ids can therefore appear more
// than once in runs.jsonl; they never enter statistics.
func pending(plan []Run, done map[string]bool) []Run {
	var out []Run
	for i := 0; i < len(plan); {
		j := i
		for j < len(plan) && plan[j].Group == plan[i].Group {
			j++
		}
		need := map[string]bool{} // configurations (without prompt) with work left
		for _, r := range plan[i:j] {
			if !r.Warmup && !done[r.ID] {
				need[results.ConfigKey(r.Config)] = true
			}
		}
		for _, r := range plan[i:j] {
			switch {
			case r.Warmup && need[results.ConfigKey(r.Config)]:
				out = append(out, r)
			case !r.Warmup && !done[r.ID]:
				out = append(out, r)
			}
		}
		i = j
	}
	return out
}
