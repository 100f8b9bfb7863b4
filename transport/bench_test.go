package transport

import (
	"bytes"
	"context"
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
