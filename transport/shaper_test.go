package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// tcpPair returns the two ends of a TCP connection over 127.0.0.1.
func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// settleGoroutines waits until the goroutine count is back to at most n.
func settleGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines still running; want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustProfile(t testing.TB, s string) Profile {
	t.Helper()
	p, err := ParseProfile(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShapeUnshapedProfileIsIdentity(t *testing.T) {
	c, _ := net.Pipe()
	defer c.Close()
	for _, p := range []Profile{{}, mustProfile(t, "loopback")} {
		if got := Shape(c, p, 1); got != c {
			t.Errorf("Shape(c, %v) = %T; want c itself", p, got)
		}
	}
}

// TestShapeKeepsOrderUnderConcurrentWrites has eight writers share one shaped connection
// whose jitter (exponential, mean 2 ms) is much larger than the gap between messages: every
// message must still arrive whole and in each writer's order.
func TestShapeKeepsOrderUnderConcurrentWrites(t *testing.T) {
	client, server := tcpPair(t)
	w := Shape(client, mustProfile(t, "custom:latency=200us,jitter=2ms,dist=exp,bandwidth=1Gbit"), 7)
	defer w.Close()

	const writers, perWriter = 8, 60
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				n := 16 + (g*31+i*17)%2000
				msg := make([]byte, 12+n)
				binary.LittleEndian.PutUint32(msg[0:], uint32(g))
				binary.LittleEndian.PutUint32(msg[4:], uint32(i))
				binary.LittleEndian.PutUint32(msg[8:], uint32(n))
				for j := range n {
					msg[12+j] = byte(g + i + j)
				}
				if _, err := w.Write(msg); err != nil {
					t.Errorf("writer %d: Write = %v", g, err)
					return
				}
			}
		}()
	}

	r := bufio.NewReader(server)
	next := make([]int, writers)
	server.SetReadDeadline(time.Now().Add(20 * time.Second))
	for range writers * perWriter {
		var hdr [12]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			t.Fatalf("read header: %v", err)
		}
		g := int(binary.LittleEndian.Uint32(hdr[0:]))
		i := int(binary.LittleEndian.Uint32(hdr[4:]))
		n := int(binary.LittleEndian.Uint32(hdr[8:]))
		if g >= writers || n > 2016 {
			t.Fatalf("message header %x is garbage: messages interleaved", hdr)
		}
		if i != next[g] {
			t.Fatalf("writer %d: got message %d; want %d", g, i, next[g])
		}
		next[g]++
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("read body: %v", err)
		}
		for j, b := range body {
			if b != byte(g+i+j) {
				t.Fatalf("writer %d message %d byte %d = %d; want %d: messages interleaved", g, i, j, b, byte(g+i+j))
			}
		}
	}
	wg.Wait()
}

// TestShapeOneWayDelay measures the one-way delay of 5 KiB messages sent one at a time. The
// bounds are loose on purpose (CI machines stall); precise numbers belong to the benchmarks.
func TestShapeOneWayDelay(t *testing.T) {
	p := mustProfile(t, "custom:latency=3ms,jitter=500us,bandwidth=100Mbit")
	client, server := tcpPair(t)
	w := Shape(client, p, 1)
	defer w.Close()

	const n, size = 25, 5 << 10
	msg := make([]byte, size)
	buf := make([]byte, size)
	var delays []time.Duration
	for range n {
		start := time.Now()
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
		delays = append(delays, time.Since(start))
	}
	t.Logf("raw %v", delays)
	slices.Sort(delays)
	predicted := p.Predict([]int{size})
	median := delays[n/2]
	t.Logf("one-way delay: min %v, median %v, max %v; predicted mean %v", delays[0], median, delays[n-1], predicted)
	if floor := p.Latency + p.Serialization(size); delays[0] < floor {
		t.Errorf("fastest message took %v; want at least latency + serialization = %v", delays[0], floor)
	}
	if tol := predicted/2 + 2*time.Millisecond; median < predicted-tol || median > predicted+tol {
		t.Errorf("median one-way delay %v; want %v ± %v", median, predicted, tol)
	}
}

// TestShapeBandwidthQueues sends 1 MiB back to back: the messages queue behind each other, so
// the last byte cannot arrive before 1 MiB / bandwidth.
func TestShapeBandwidthQueues(t *testing.T) {
	p := mustProfile(t, "custom:latency=1ms,bandwidth=100Mbit")
	client, server := tcpPair(t)
	w := Shape(client, p, 1)
	defer w.Close()

	const total, chunk = 1 << 20, 64 << 10
	done := make(chan error, 1)
	go func() {
		server.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.CopyN(io.Discard, server, total)
		done <- err
	}()
	start := time.Now()
	msg := make([]byte, chunk)
	for range total / chunk {
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if floor := p.Latency + p.Serialization(total); elapsed < floor {
		t.Errorf("1 MiB arrived after %v; want at least %v at 100 Mbit/s", elapsed, floor)
	}
}

// TestShapeWriteDeadline fills the delay line towards a peer that never reads: Write must
// give up at its deadline rather than hang.
func TestShapeWriteDeadline(t *testing.T) {
	a, b := net.Pipe() // unbuffered: nobody reads b, so the first delivery blocks
	defer b.Close()
	w := Shape(a, mustProfile(t, "custom:latency=1ms"), 1)
	defer w.Close()
	w.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	msg := make([]byte, 1<<20)
	var err error
	for range 16 {
		if _, err = w.Write(msg); err != nil {
			break
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write towards a stalled peer = %v; want os.ErrDeadlineExceeded", err)
	}
}

func TestShapeCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	for _, tc := range []struct {
		name  string
		stall bool
	}{
		{name: "drains to a reading peer"},
		{name: "aborts towards a stalled peer", stall: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer b.Close()
			if !tc.stall {
				go io.Copy(io.Discard, b)
			}
			w := Shape(a, mustProfile(t, "custom:latency=5ms,jitter=1ms,bandwidth=1Gbit"), 1)
			for range 10 {
				if _, err := w.Write(make([]byte, 1000)); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			if err := w.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Close took %v; want it bounded by the drain grace", d)
			}
			if _, err := w.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close = %v; want net.ErrClosed", err)
			}
			if err := w.Close(); err != nil {
				t.Errorf("second Close = %v", err)
			}
		})
	}
	settleGoroutines(t, base)
}

func TestShapeReportsPeerFailure(t *testing.T) {
	a, b := net.Pipe()
	w := Shape(a, mustProfile(t, "custom:latency=1ms"), 1)
	defer w.Close()
	b.Close()
	w.Write([]byte("lost")) // queued; its delivery fails
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := w.Write([]byte("x"))
		if err != nil {
			if !errors.Is(err, io.ErrClosedPipe) {
				t.Errorf("Write after the peer closed = %v; want io.ErrClosedPipe", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Write kept succeeding after the peer closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
