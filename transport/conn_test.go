package transport

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	stage1Self = Identity{Model: "abc123", TotalLayers: 4, DType: BFloat16, Stage: 1, Start: 2, End: 4}
	driverSelf = Identity{Model: "abc123", TotalLayers: 4, DType: BFloat16, Stage: 0, Start: 0, End: 2}
)

// startStage listens on 127.0.0.1, accepts one connection and runs serve on it in a goroutine.
// It returns the address; the test's cleanup closes everything and waits for serve to return.
func startStage(t testing.TB, opts Options, serve func(ctx context.Context, c *Conn)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts.Self = stage1Self
	ln, err := Listen(ctx, "127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("Accept = %v", err)
			}
			return
		}
		defer c.Close()
		serve(ctx, c)
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echoStage answers every Forward with a Reply holding the first data byte as the token and
// its own timing; it applies Resets silently.
func echoStage(t testing.TB) func(ctx context.Context, c *Conn) {
	return func(ctx context.Context, c *Conn) {
		var fw Forward
		var reply Reply
		for {
			f, err := c.Recv(ctx)
			if err != nil {
				return
			}
			switch f.Type {
			case TypeReset, TypeBye:
				continue
			case TypeForward:
			default:
				t.Errorf("stage got a %s frame", f.Type)
				return
			}
			if err := f.Decode(&fw); err != nil {
				t.Errorf("stage decode: %v", err)
				return
			}
			reply.Tokens = append(reply.Tokens[:0], int32(fw.Data[0]))
			reply.Timings = reply.Timings[:0]
			reply.AddTiming(1, 3*time.Millisecond)
			if err := c.Send(ctx, f.Session, f.Seq, &reply); err != nil {
				return
			}
		}
	}
}

func dialStage(t testing.TB, addr string, opts Options) *Conn {
	t.Helper()
	opts.Self, opts.Peer = driverSelf, stage1Self
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, opts)
	if err != nil {
		t.Fatalf("Dial = %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCallDecodeSteps(t *testing.T) {
	addr := startStage(t, Options{}, echoStage(t))
	c := dialStage(t, addr, Options{})
	ctx := context.Background()
	if err := c.Send(ctx, 1, 0, &Reset{}); err != nil {
		t.Fatalf("Send(Reset) = %v", err)
	}
	fw := bf16Hidden(1, 2560)
	var reply Reply
	for step := range 20 {
		fw.Position = step
		fw.Data[0] = byte(step)
		if err := c.Call(ctx, 1, uint64(step+1), fw, &reply); err != nil {
			t.Fatalf("step %d: Call = %v", step, err)
		}
		if len(reply.Tokens) != 1 || reply.Tokens[0] != int32(step) {
			t.Errorf("step %d: reply tokens %v; want [%d]", step, reply.Tokens, step)
		}
		if len(reply.Timings) != 1 || reply.Timings[0] != (StageTiming{Stage: 1, Forward: 3 * time.Millisecond}) {
			t.Errorf("step %d: reply timings %v; want stage 1 at 3ms", step, reply.Timings)
		}
	}
	rtt, err := c.Ping(ctx)
	if err != nil || rtt <= 0 {
		t.Errorf("Ping = %v, %v; want a positive round trip", rtt, err)
	}
}

func TestCallTimeoutNamesPeer(t *testing.T) {
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		c.Recv(ctx) // take the request, never answer
		<-ctx.Done()
	})
	c := dialStage(t, addr, Options{Timeout: 300 * time.Millisecond})
	start := time.Now()
	err := c.Call(context.Background(), 1, 1, bf16Hidden(1, 8), &Reply{})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Call to a silent stage = %v; want ErrTimeout", err)
	}
	if want := "transport: stage 1 (" + addr + "): no reply within 300ms"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q; want it to start with %q", err, want)
	}
	if elapsed > 3*time.Second {
		t.Errorf("Call gave up after %v; want about 300ms", elapsed)
	}
}

func TestCallPrefillGetsLongerTimeout(t *testing.T) {
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		for {
			f, err := c.Recv(ctx)
			if err != nil {
				return
			}
			time.Sleep(400 * time.Millisecond) // a slow forward
			c.Send(ctx, f.Session, f.Seq, &Reply{})
		}
	})
	c := dialStage(t, addr, Options{Timeout: 100 * time.Millisecond, PrefillTimeout: 5 * time.Second})
	ctx := context.Background()
	if err := c.Call(ctx, 1, 1, bf16Hidden(64, 8), &Reply{}); err != nil {
		t.Errorf("prefill Call = %v; want it to wait for the slow stage", err)
	}
	if err := c.Call(ctx, 1, 2, bf16Hidden(1, 8), &Reply{}); !errors.Is(err, ErrTimeout) {
		t.Errorf("decode Call = %v; want ErrTimeout after 100ms", err)
	}
	// The late answer to seq 2 arrives while seq 3 waits: it is skipped, not taken for 3's.
	if err := c.Call(ctx, 1, 3, bf16Hidden(2, 8), &Reply{}); err != nil {
		t.Errorf("Call after a timed-out one = %v; want the connection usable", err)
	}
}

func TestCallContextDeadlineWins(t *testing.T) {
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		c.Recv(ctx)
		<-ctx.Done()
	})
	c := dialStage(t, addr, Options{Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Call(ctx, 1, 1, bf16Hidden(1, 8), &Reply{})
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 3*time.Second {
		t.Errorf("Call with a 200ms context = %v after %v; want ErrTimeout after about 200ms", err, time.Since(start))
	}
}

func TestPeerDies(t *testing.T) {
	for _, tc := range []struct {
		name string
		die  func(c *Conn) // what the stage does on receiving the request
	}{
		{name: "stage crashes after the request", die: func(c *Conn) { c.nc.Close() }},
		{name: "stage closes politely", die: func(c *Conn) { c.Close() }},
		{name: "stage sends garbage", die: func(c *Conn) { c.nc.Write([]byte("panic: runtime error\n")); c.nc.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
				if _, err := c.Recv(ctx); err == nil {
					tc.die(c)
				}
			})
			c := dialStage(t, addr, Options{Timeout: 10 * time.Second})
			start := time.Now()
			err := c.Call(context.Background(), 1, 1, bf16Hidden(1, 8), &Reply{})
			if err == nil {
				t.Fatal("Call succeeded; want an error")
			}
			if !errors.Is(err, ErrPeerGone) && !errors.Is(err, ErrBadFrame) {
				t.Errorf("Call = %v; want ErrPeerGone or ErrBadFrame", err)
			}
			if !strings.Contains(err.Error(), "stage 1 ("+addr+")") {
				t.Errorf("error %q does not name the peer", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Call noticed the dead peer after %v; want well before the 10s timeout", d)
			}
		})
	}
}

func TestStageSeesDriverDie(t *testing.T) {
	got := make(chan error, 1)
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		for {
			if _, err := c.Recv(ctx); err != nil {
				got <- err
				return
			}
		}
	})
	c := dialStage(t, addr, Options{})
	c.nc.Close() // the driver process dies without a Bye
	select {
	case err := <-got:
		if !errors.Is(err, ErrPeerGone) || !strings.Contains(err.Error(), "driver (127.0.0.1:") {
			t.Errorf("stage Recv = %v; want ErrPeerGone naming the driver", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stage Recv did not notice the dead driver")
	}
}

func TestCloseSendsBye(t *testing.T) {
	frames := make(chan Type, 4)
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		for {
			f, err := c.Recv(ctx)
			if err != nil {
				return
			}
			frames <- f.Type
		}
	})
	c := dialStage(t, addr, Options{})
	c.Close()
	select {
	case typ := <-frames:
		if typ != TypeBye {
			t.Errorf("stage received %s; want bye", typ)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stage received nothing")
	}
	if err := c.Send(context.Background(), 0, 0, &Ping{}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close = %v; want net.ErrClosed", err)
	}
}

func TestRecvHonoursCancel(t *testing.T) {
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) { <-ctx.Done() })
	c := dialStage(t, addr, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Recv(ctx)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 3*time.Second {
		t.Errorf("Recv cancelled after 100ms = %v after %v; want context.Canceled promptly", err, time.Since(start))
	}
}

func TestRemoteErrorIsReturned(t *testing.T) {
	addr := startStage(t, Options{}, func(ctx context.Context, c *Conn) {
		f, err := c.Recv(ctx)
		if err != nil {
			return
		}
		c.Send(ctx, f.Session, f.Seq, &Error{Code: CodeInternal, Message: "engine: out of memory"})
		<-ctx.Done()
	})
	c := dialStage(t, addr, Options{})
	err := c.Call(context.Background(), 1, 1, bf16Hidden(1, 8), &Reply{})
	var remote *Error
	if !errors.As(err, &remote) || remote.Message != "engine: out of memory" {
		t.Fatalf("Call = %v; want the stage's *Error", err)
	}
	if want := "transport: stage 1 (" + addr + ") reports: engine: out of memory"; err.Error() != want {
		t.Errorf("error = %q; want %q", err, want)
	}
}

func TestSendRefusesOversizedPayload(t *testing.T) {
	addr := startStage(t, Options{}, echoStage(t))
	c := dialStage(t, addr, Options{MaxPayload: 1000})
	ctx := context.Background()
	if err := c.Send(ctx, 1, 1, bf16Hidden(1, 1000)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Send of a 2000-byte tensor with MaxPayload 1000 = %v; want ErrTooLarge", err)
	}
	if err := c.Call(ctx, 1, 2, bf16Hidden(1, 100), &Reply{}); err != nil {
		t.Errorf("Call after the refused Send = %v; want the connection intact", err)
	}
}

func TestDialWaitsForTheListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // free the port: the stage "starts later"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialed := make(chan error, 1)
	go func() {
		c, err := Dial(ctx, addr, Options{})
		if c != nil {
			c.Close()
		}
		dialed <- err
	}()
	time.Sleep(300 * time.Millisecond)
	l, err := Listen(ctx, addr, Options{})
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	defer l.Close()
	c, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept = %v", err)
	}
	defer c.Close()
	if err := <-dialed; err != nil {
		t.Errorf("Dial before Listen = %v; want it to retry until the stage is up", err)
	}
}

func TestDialGivesUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, addr, Options{Peer: Identity{Stage: 1}})
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "dial stage 1 at "+addr+": nothing answered within") {
		t.Errorf("Dial with nothing listening = %v; want a refusal that names the stage", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial gave up after %v; want about 300ms", d)
	}
}

func TestShapedConnection(t *testing.T) {
	p := mustProfile(t, "custom:latency=2ms")
	addr := startStage(t, Options{Profile: p}, echoStage(t))
	c := dialStage(t, addr, Options{Profile: p})
	rtt, err := c.Ping(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rtt < 4*time.Millisecond {
		t.Errorf("Ping over a 2ms-each-way link took %v; want at least 4ms", rtt)
	}
	if err := c.Call(context.Background(), 1, 1, bf16Hidden(1, 64), &Reply{}); err != nil {
		t.Errorf("Call = %v", err)
	}
}

// TestConnLeavesNoGoroutines closes shaped connections on both sides and checks that every
// goroutine they started has exited.
func TestConnLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	p := mustProfile(t, "custom:latency=1ms,jitter=1ms,bandwidth=1Gbit")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := Listen(ctx, "127.0.0.1:0", Options{Self: stage1Self, Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept(ctx)
		if err != nil {
			t.Errorf("Accept = %v", err)
			return
		}
		defer c.Close()
		echoStage(t)(ctx, c)
	}()
	c, err := Dial(ctx, ln.Addr().String(), Options{Self: driverSelf, Peer: stage1Self, Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := c.Call(ctx, 1, uint64(i), bf16Hidden(1, 256), &Reply{}); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	<-done
	ln.Close()
	settleGoroutines(t, base)
}

func TestPingAnsweredWhileStageWaits(t *testing.T) {
	addr := startStage(t, Options{}, echoStage(t))
	c := dialStage(t, addr, Options{})
	for range 3 {
		if _, err := c.Ping(context.Background()); err != nil {
			t.Fatalf("Ping = %v", err)
		}
	}
	var reply Reply
	fw := bf16Hidden(1, 16)
	if err := c.Call(context.Background(), 2, 9, fw, &reply); err != nil || !bytes.Equal([]byte{byte(reply.Tokens[0])}, fw.Data[:1]) {
		t.Errorf("Call after pings = %v, %v", reply, err)
	}
}
