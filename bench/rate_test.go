package bench

import (
	"math"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
)

// mlxLMRates replays mlx-lm 0.32.2's stream_generate timing loop (generate.py) over token
// arrival times measured from the request's start: the clock restarts when the first token
// arrives, prompt_tps = prompt tokens / that first wait, and the last response's
// generation_tps = (n+1) / (now - tic) with n the last token's index.
func mlxLMRates(promptTokens int, arrivals []time.Duration) (promptTPS, generationTPS float64) {
	var tic time.Duration // time.perf_counter() before the generator starts
	for n, now := range arrivals {
		if n == 0 {
			promptTPS = float64(promptTokens) / (now - tic).Seconds()
			tic = now
		}
		generationTPS = float64(n+1) / (now - tic).Seconds()
	}
	return promptTPS, generationTPS
}

// statsFrom builds the engines.Stats a generation with these arrival times reports: TTFT is the
// first arrival, Decode runs from the first token to the last.
func statsFrom(promptTokens int, arrivals []time.Duration) engines.Stats {
	st := engines.Stats{PromptTokens: promptTokens, Tokens: make([]int, len(arrivals))}
	if len(arrivals) > 0 {
		st.TTFT, st.Prefill = arrivals[0], arrivals[0]
		st.Decode = arrivals[len(arrivals)-1] - arrivals[0]
		st.Steps = make([]engines.Step, len(arrivals)-1)
	}
	return st
}

func TestDecodeTokSMatchesMLXLM(t *testing.T) {
	at := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	for _, tc := range []struct {
		name                string
		prompt              int
		arrivals            []time.Duration
		wantDecode, wantPre float64
	}{
		// 5 tokens, 4 intervals of 50 ms: 5/0.2 s = 25 tok/s, not the 20 that steps/time gives.
		{"steady", 10, at(200, 250, 300, 350, 400), 25, 50},
		// A speculative step emits several tokens at once; each one counts.
		{"bursts", 8, at(100, 160, 160, 160, 220, 220), 50, 80},
		{"two tokens", 4, at(40, 140), 20, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := statsFrom(tc.prompt, tc.arrivals)
			gotDecode, gotPre := DecodeTokS(st), PrefillTokS(st)
			refPre, refDecode := mlxLMRates(tc.prompt, tc.arrivals)
			near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
			if !near(gotDecode, tc.wantDecode) || !near(gotDecode, refDecode) {
				t.Errorf("DecodeTokS = %v; want %v (mlx-lm's generation_tps: %v)", gotDecode, tc.wantDecode, refDecode)
			}
			if !near(gotPre, tc.wantPre) || !near(gotPre, refPre) {
				t.Errorf("PrefillTokS = %v; want %v (mlx-lm's prompt_tps: %v)", gotPre, tc.wantPre, refPre)
			}
			res := Result{}
			fill(&res, st, "")
			if res.DecodeTokS != gotDecode || res.PrefillTokS != gotPre {
				t.Errorf("fill: decode %v, prefill %v tok/s; want %v, %v as the helpers count", res.DecodeTokS, res.PrefillTokS, gotDecode, gotPre)
			}
		})
	}
	// With no decode interval there is nothing to time: 0, never Inf or NaN.
	for _, n := range []int{0, 1} {
		st := statsFrom(3, at(make([]int, n)...))
		if got := DecodeTokS(st); got != 0 {
			t.Errorf("DecodeTokS(%d tokens) = %v; want 0", n, got)
		}
	}
}
