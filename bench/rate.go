package bench

import (
	"time"

	"github.com/hippo-bench/hippo/engines"
)

// Rate is n per second of d, or 0 when d is not positive (nothing was timed). Every tok/s this
// package reports is a Rate; DecodeTokS says which tokens and which interval a decode rate uses.
func Rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// DecodeTokS is the decode rate of one generation, counted exactly as mlx-lm 0.32's
// stream_generate counts generation_tps: all N generated tokens, the first included, over the
// wall time from the first token's arrival to the last's (engines.Stats.Decode). N tokens over
// N-1 intervals, so it reads a little higher than steps over time would; a speculative step
// that emits several tokens counts each of them. A generation of fewer than 2 tokens has no
// decode interval and gets 0 (mlx-lm divides by the few microseconds its loop took).
func DecodeTokS(st engines.Stats) float64 {
	if len(st.Tokens) < 2 {
		return 0
	}
	return Rate(len(st.Tokens), st.Decode)
}

// PrefillTokS is the prompt rate, as mlx-lm's prompt_tps: prompt tokens over the time from the
// request's start until the first token was sampled (engines.Stats.TTFT; in the standalone engine
// that equals Stats.Prefill).
func PrefillTokS(st engines.Stats) float64 { return Rate(st.PromptTokens, st.TTFT) }
