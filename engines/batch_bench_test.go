package engines

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// BenchmarkBatcherThroughput measures aggregate decode tok/s of a Batcher with 1, 4 and 16
// concurrent generations on $HIPPO_BATCH_MODEL (skipped without it: a benchmark, not a test).
func BenchmarkBatcherThroughput(b *testing.B) {
	dir := os.Getenv("HIPPO_BATCH_MODEL")
	if dir == "" {
		b.Skip("set HIPPO_BATCH_MODEL to a checkpoint directory")
	}
	e, err := Open(context.Background(), Options{Model: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	bt, err := NewBatcher(e, BatchOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer bt.Close()
	for _, n := range []int{1, 4, 16} {
		b.Run(map[int]string{1: "streams=1", 4: "streams=4", 16: "streams=16"}[n], func(b *testing.B) {
			for range b.N {
				start := time.Now()
				var wg sync.WaitGroup
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						bt.Generate(context.Background(), Request{Tokens: []int{100 + i, 200, 300, 400, 500, 600}, MaxTokens: 24, IgnoreEOS: true}, func(Token) error { return nil })
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(24*n)/time.Since(start).Seconds(), "tok/s")
				b.Logf("%d streams: %.1f tok/s", n, float64(24*n)/time.Since(start).Seconds())
			}
		})
	}
}
