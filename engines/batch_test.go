package engines

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/hippo-bench/hippo/engines/synth"
)

// TestBatchedMatchesSolo is the batching invariant: every request served by a Batcher, whatever
// else shares its batch, gets the tokens Engine.Generate gives it alone: greedy and seeded sampled
// requests, prompts of mixed lengths (some longer than the prefill budget, so prefilled in chunks
// across steps, and prompts of equal length prefilled in one batched pass), requests joining while others decode, a request cancelled mid-flight and one
// stopped by its caller (as a stop sequence does) get a prefix of their solo tokens.
func TestBatchedMatchesSolo(t *testing.T) {
	cases := []struct{ preset, dtype string }{
		{"tiny-qwen3", "f32"},
		{"tiny-qwen3", "bf16"},
		{"tiny-llama", "f32"},
	}
	for _, tc := range cases {
		t.Run(tc.preset+"/"+tc.dtype, func(t *testing.T) {
			dir := synthesize(t, synth.Options{Preset: tc.preset, Seed: 5})
			e, err := Open(context.Background(), Options{Model: dir, DType: tc.dtype})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			testBatchedMatchesSolo(t, e)
		})
	}
}

// batchCase is one request of the invariant test and how it runs in the batch.
type batchCase struct {
	name string
	req  Request
	// after: the request starts once request 0 has produced this many tokens (0: at once).
	after int
	// cancelAt / stopAt: the request's context is cancelled, or its emit fails, after this many
	// tokens (0: never).
	cancelAt, stopAt int
}

func testBatchedMatchesSolo(t *testing.T, e *Engine) {
	prompt := func(n, salt int) []int {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = 100 + (i*37+salt*101)%5000
		}
		return ids
	}
	cases := []batchCase{
		{name: "long greedy", req: Request{Tokens: prompt(3, 0), MaxTokens: 40, IgnoreEOS: true}},
		{name: "one-token prompt", req: Request{Tokens: prompt(1, 1), MaxTokens: 12, IgnoreEOS: true}},
		{name: "chunked prompt", req: Request{Tokens: prompt(45, 2), MaxTokens: 16, IgnoreEOS: true}},
		{name: "sampled", req: Request{Tokens: prompt(9, 3), MaxTokens: 20, Temperature: 0.9, TopP: 0.9, Seed: 11, IgnoreEOS: true}},
		{name: "joins mid-flight", req: Request{Tokens: prompt(17, 4), MaxTokens: 14, IgnoreEOS: true}, after: 6},
		{name: "sampled joins later", req: Request{Tokens: prompt(30, 5), MaxTokens: 10, Temperature: 0.7, Seed: 3, IgnoreEOS: true}, after: 15},
		{name: "cancelled", req: Request{Tokens: prompt(7, 6), MaxTokens: 30, IgnoreEOS: true}, cancelAt: 5},
		{name: "stopped", req: Request{Tokens: prompt(12, 7), MaxTokens: 30, IgnoreEOS: true}, after: 2, stopAt: 8},
		{name: "eos allowed", req: Request{Tokens: prompt(5, 8), MaxTokens: 25}},
		{name: "prefilled beside an equal prompt", req: Request{Tokens: prompt(9, 9), MaxTokens: 18, IgnoreEOS: true}},
		{name: "pair a", req: Request{Tokens: prompt(6, 10), MaxTokens: 12, IgnoreEOS: true}, after: 10},
		{name: "pair b", req: Request{Tokens: prompt(6, 11), MaxTokens: 12, Temperature: 1, Seed: 5, IgnoreEOS: true}, after: 10},
	}
	solo := make([][]int, len(cases))
	for i, c := range cases {
		st, err := e.Generate(context.Background(), c.req, func(Token) error { return nil })
		if err != nil {
			t.Fatalf("%s: solo: %v", c.name, err)
		}
		solo[i] = st.Tokens
	}
	b, err := NewBatcher(e, BatchOptions{MaxBatch: 12, PrefillBudget: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	errStop := errors.New("stop sequence")
	got := make([][]int, len(cases))
	errs := make([]error, len(cases))
	// progress[k] is closed once request 0 has produced k tokens; requests with the same after
	// arrive together.
	progress := make(map[int]chan struct{})
	for _, c := range cases {
		if c.after > 0 {
			progress[c.after] = make(chan struct{})
		}
	}
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ch := progress[c.after]; ch != nil {
				<-ch
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var toks []int
			_, err := b.Generate(ctx, c.req, func(tk Token) error {
				toks = append(toks, tk.ID)
				if i == 0 {
					if ch := progress[len(toks)]; ch != nil {
						close(ch)
					}
				}
				if len(toks) == c.cancelAt {
					cancel()
				}
				if len(toks) == c.stopAt {
					return errStop
				}
				return nil
			})
			got[i], errs[i] = toks, err
		}()
	}
	wg.Wait()
	for i, c := range cases {
		want := solo[i]
		switch {
		case c.cancelAt > 0:
			if !errors.Is(errs[i], ErrCanceled) {
				t.Errorf("%s: error %v; want ErrCanceled", c.name, errs[i])
			}
			// The row retires at the next step: at most one more token may come.
			if len(got[i]) < c.cancelAt || len(got[i]) > c.cancelAt+1 {
				t.Errorf("%s: %d tokens after cancelling at %d", c.name, len(got[i]), c.cancelAt)
			}
			want = want[:min(len(got[i]), len(want))]
		case c.stopAt > 0:
			if !errors.Is(errs[i], errStop) {
				t.Errorf("%s: error %v; want the emit error", c.name, errs[i])
			}
			want = want[:c.stopAt]
		default:
			if errs[i] != nil {
				t.Errorf("%s: %v", c.name, errs[i])
			}
		}
		if !slices.Equal(got[i], want) {
			t.Errorf("%s: batched tokens\n%v\nwant solo\n%v", c.name, got[i], want)
		}
	}
}

// TestBatcherBounds checks the scheduler's limits: no more than MaxBatch rows run at once, the
// others wait and still finish; a request longer than the context is refused; Close ends waiting
// and running calls with ErrClosed.
func TestBatcherBounds(t *testing.T) {
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 5})
	e, err := Open(context.Background(), Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	b, err := NewBatcher(e, BatchOptions{MaxBatch: 2, Context: 64})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.MaxBatch(); got != 2 {
		t.Errorf("MaxBatch() = %d; want 2", got)
	}
	if _, err := b.Generate(context.Background(), Request{Tokens: []int{1, 2, 3}, MaxTokens: 62}, nil); err == nil {
		t.Error("a request longer than the context was accepted")
	}
	var mu sync.Mutex
	active, peak := 0, 0
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			st, err := b.Generate(context.Background(), Request{Tokens: []int{10 + i, 20}, MaxTokens: 8, IgnoreEOS: true}, func(Token) error {
				mu.Lock()
				defer mu.Unlock()
				if n == 0 {
					active++
					peak = max(peak, active)
				}
				n++
				if n == 8 {
					active--
				}
				return nil
			})
			if err != nil || len(st.Tokens) != 8 {
				t.Errorf("request %d: %d tokens, %v; want 8, nil", i, len(st.Tokens), err)
			}
		}()
	}
	wg.Wait()
	// Tokens of a row reach its reader after the row may have retired, so the readers' view can
	// lag by a row; the scheduler never runs more than MaxBatch.
	if peak > 3 {
		t.Errorf("%d streams were active at once; want at most MaxBatch (+1 for reader lag)", peak)
	}
	b.Close()
	if _, err := b.Generate(context.Background(), Request{Tokens: []int{5}, MaxTokens: 2}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate after Close: %v; want ErrClosed", err)
	}
}

// TestBatcherSlowReader: a reader that stops reading holds back nobody: the other rows finish
// meanwhile, and the slow reader gets every token of its row once it reads again.
func TestBatcherSlowReader(t *testing.T) {
	dir := synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 5})
	e, err := Open(context.Background(), Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	req := func(salt int) Request {
		return Request{Tokens: []int{300 + salt, 400, 500 + salt}, MaxTokens: 24, IgnoreEOS: true}
	}
	solo, err := e.Generate(context.Background(), req(0), func(Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBatcher(e, BatchOptions{MaxBatch: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	release := make(chan struct{})
	slow := make(chan []int)
	go func() {
		var toks []int
		b.Generate(context.Background(), req(0), func(tk Token) error {
			if len(toks) == 1 {
				<-release // stop reading after one token
			}
			toks = append(toks, tk.ID)
			return nil
		})
		slow <- toks
	}()
	var wg sync.WaitGroup
	for i := 1; i <= 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := b.Generate(context.Background(), req(i), func(Token) error { return nil })
			if err != nil || len(st.Tokens) != 24 {
				t.Errorf("request %d beside a stalled reader: %d tokens, %v; want 24", i, len(st.Tokens), err)
			}
		}()
	}
	wg.Wait() // would hang if the stalled reader held the batch
	close(release)
	if got := <-slow; !slices.Equal(got, solo.Tokens) {
		t.Errorf("the slow reader's tokens %v; want solo %v", got, solo.Tokens)
	}
}
