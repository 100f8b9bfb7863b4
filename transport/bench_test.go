package transport

import (
	"bytes"
	"context"
	"math"
	"slices"
	"testing"
	"time"
)

// BenchmarkRoundTrip measures one pipeline decode hop over loopback TCP: a 5 KiB bf16 hidden
// state (1 x 2560) to a stage that answers at once with one token id and its timing, plain and
// through each link profile (both ends shaped). It reports the mean round trip (us/rt) beside
// the profile's prediction (pred-us/rt, which excludes the loopback's own cost).
func BenchmarkRoundTrip(b *testing.B) {
	fw := bf16Hidden(1, 2560)
	reqPayload, err := Marshal(fw)
	if err != nil {
		b.Fatal(err)
	}
	reply := Reply{Tokens: []int32{1}}
	reply.AddTiming(1, time.Millisecond)
	replyPayload, err := Marshal(&reply)
	if err != nil {
		b.Fatal(err)
	}
	hops := []int{HeaderSize + len(reqPayload), HeaderSize + len(replyPayload)}

	cases := []Profile{{Name: "plain"}}
	for _, p := range Profiles() {
		if p.shapes() {
			cases = append(cases, p)
		}
	}
	for _, p := range cases {
		b.Run(p.Name, func(b *testing.B) {
			addr := startStage(b, Options{Profile: p, Seed: 1}, echoStage(b))
			c := dialStage(b, addr, Options{Profile: p, Seed: 2})
			ctx := context.Background()
			var got Reply
			seq := uint64(0)
			for range 3 { // warm up: connection, buffers, page faults
				seq++
				if err := c.Call(ctx, 1, seq, fw, &got); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				seq++
				if err := c.Call(ctx, 1, seq, fw, &got); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N), "us/rt")
			b.ReportMetric(float64(p.Predict(hops).Microseconds()), "pred-us/rt")
			b.ReportMetric(0, "ns/op") // us/rt says it in the unit that matters
		})
	}
}

// BenchmarkSealCost measures what sealing (AES-256-GCM on every frame) adds to a decode step's
// hop: the same 5 KiB bf16 hidden state and one-token reply as BenchmarkRoundTrip, over two
// connections, one sealed and one not, alternating blocks of 20 round trips so that both see
// the same machine load. Each b.N is one pair of blocks; run it with -benchtime 100x or more. It
// reports both means (us/rt), the microseconds sealing adds per round trip, the overhead in
// percent of the hop (ratio of the means), and the median and 95% interval of the per-pair
// ratios (robust to the load spikes of a shared machine). Compute is not included: on a real step the stages' forward time comes on top,
// so this is an upper bound of the relative cost per decode step.
func BenchmarkSealCost(b *testing.B) {
	fw := bf16Hidden(1, 2560)
	const block = 20
	for _, name := range []string{"loopback", "thunderbolt"} {
		b.Run(name, func(b *testing.B) {
			p, err := ParseProfile(name)
			if err != nil {
				b.Fatal(err)
			}
			conns := map[bool]*Conn{}
			for _, plain := range []bool{false, true} {
				addr := startStage(b, Options{Profile: p, Seed: 1, plaintext: plain}, echoStage(b))
				conns[plain] = dialStage(b, addr, Options{Profile: p, Seed: 2, plaintext: plain})
			}
			ctx := context.Background()
			var got Reply
			seq := uint64(0)
			run := func(c *Conn) time.Duration {
				start := time.Now()
				for range block {
					seq++
					if err := c.Call(ctx, 1, seq, fw, &got); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start) / block
			}
			run(conns[false]) // warm up both
			run(conns[true])
			var sealed, plain, ratio []float64
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				var s, q time.Duration
				if i%2 == 0 { // alternate which goes first
					s, q = run(conns[false]), run(conns[true])
				} else {
					q, s = run(conns[true]), run(conns[false])
				}
				sealed = append(sealed, float64(s.Nanoseconds())/1e3)
				plain = append(plain, float64(q.Nanoseconds())/1e3)
				ratio = append(ratio, float64(s)/float64(q))
			}
			ms, _ := meanStd(sealed)
			mp, _ := meanStd(plain)
			_, sr := meanStd(ratio)
			ci := 1.96 * sr / math.Sqrt(float64(len(ratio)))
			slices.Sort(ratio)
			b.ReportMetric(ms, "sealed-us/rt")
			b.ReportMetric(mp, "plain-us/rt")
			b.ReportMetric(ms-mp, "added-us/rt")
			b.ReportMetric(100*(ms/mp-1), "overhead-%")
			b.ReportMetric(100*(ratio[len(ratio)/2]-1), "median-pair-overhead-%")
			b.ReportMetric(100*ci, "pair-ci95-%")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func meanStd(xs []float64) (mean, std float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		std += (x - mean) * (x - mean)
	}
	if len(xs) > 1 {
		std = math.Sqrt(std / float64(len(xs)-1))
	}
	return mean, std
}

// BenchmarkSeal is the CPU cost of sealing and opening one decode step's hidden state.
func BenchmarkSeal(b *testing.B) {
	tx, _, err := sessionKeys("k", []byte("hello"), []byte("ack"))
	if err != nil {
		b.Fatal(err)
	}
	rx, _, err := sessionKeys("k", []byte("hello"), []byte("ack"))
	if err != nil {
		b.Fatal(err)
	}
	fw := bf16Hidden(1, 2560)
	wire, n, err := appendMessage(nil, Version, 1, 1, fw)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, len(wire)+Overhead)
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for b.Loop() {
		f := tx.seal(append(buf[:0], wire...), n)
		if _, _, ok := rx.open(f[:HeaderSize], f[HeaderSize:]); !ok {
			b.Fatal("a sealed frame did not open")
		}
	}
}

// BenchmarkFrameCodec encodes and decodes a decode step's frame in memory: the CPU cost of
// the protocol itself, without a network.
func BenchmarkFrameCodec(b *testing.B) {
	fw := bf16Hidden(1, 2560)
	var wire []byte
	var dec Forward
	src := bytes.NewReader(nil)
	r := NewReader(src, 0)
	b.ReportAllocs()
	b.SetBytes(int64(len(fw.Data)))
	for b.Loop() {
		var err error
		wire, _, err = appendMessage(wire[:0], Version, 1, 1, fw)
		if err != nil {
			b.Fatal(err)
		}
		src.Reset(wire)
		f, err := r.ReadFrame()
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Decode(&dec); err != nil {
			b.Fatal(err)
		}
	}
}
