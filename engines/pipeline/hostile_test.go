package pipeline_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/transport"
)

// The hostile-peer suite runs one live rank (a child `hippo rank`, on loopback, with a secret)
// and attacks it the ways a stranger on the network could, each bounded in count and time. Every
// attack must be refused, and a legitimate driver's run on the same rank must still complete
// and equal standalone, token for token.

const hostileSecret = "hostile-suite-secret"

// suite is the live rank and what a legitimate run must produce.
type suite struct {
	plan  pipeline.Plan
	local *pipeline.Local
	addr  string
	req   engines.Request
	want  []int
}

// run generates through the rank at addr as a legitimate driver and compares with standalone.
func (s *suite) run(t *testing.T, addr string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := pipeline.OpenDriver(ctx, s.plan, addr)
	if err != nil {
		return err
	}
	defer d.Close()
	st, err := d.Generate(ctx, s.req, func(engines.Token) error { return nil })
	if err != nil {
		return err
	}
	if !slices.Equal(st.Tokens, s.want) {
		t.Errorf("pipeline tokens %v; want standalone %v", st.Tokens, s.want)
	}
	return nil
}

// refused waits (at most limit) for the rank to close c, and fails if it does not.
func refused(t *testing.T, c net.Conn, limit time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the rank kept the connection open for %v", limit)
	}
}

// logged waits for the rank's log to contain want.
func (s *suite) logged(t *testing.T, want string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(s.local.Logs(), want) {
			return
		}
	}
	t.Errorf("rank log does not mention %q:\n%s", want, s.local.Logs())
}

func TestHostilePeers(t *testing.T) {
	exe := testenv.Hippo(t)
	m := synthesize(t, "tiny-qwen3")
	s := &suite{plan: m.plan(t, "0:2,2:4"), req: testRequest, want: m.standalone(t)}
	s.plan.Secret = hostileSecret
	cfg, fp, split := m.cfg, m.fp, s.plan.Split
	var err error
	if s.local, err = pipeline.Launch(context.Background(), exe, s.plan); err != nil {
		t.Fatal(err)
	}
	defer s.local.Stop()
	s.addr = s.local.Addr
	if err := s.run(t, s.addr); err != nil { // also waits for the rank to come up
		t.Fatalf("legitimate run before the attacks: %v\nrank log:\n%s", err, s.local.Logs())
	}

	// A proxy records a legitimate handshake, for the replay below.
	rec := newProxy(t, s.addr, nil)
	if err := s.run(t, rec.addr()); err != nil {
		t.Fatalf("legitimate run through a recording proxy: %v", err)
	}
	recorded := rec.upstream()

	dialRaw := func() net.Conn {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("handshake attacks beside a legitimate run", func(t *testing.T) {
		// Held open during the legitimate run: a flood (more than the rank's pending
		// handshakes), then idle peers and a slowloris handshake, which the rank's handshake
		// deadline must close.
		var flood []net.Conn
		for range 100 {
			flood = append(flood, dialRaw())
		}
		var idle []net.Conn
		for range 3 {
			idle = append(idle, dialRaw())
		}
		slow := dialRaw()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			hello := recorded[:transport.HeaderSize+1]
			for _, b := range hello {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
				if _, err := slow.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		cases := []struct {
			name string
			send []byte
			says string
		}{
			{"garbage before the handshake", randomBytes(64), "bad magic"},
			{"replayed handshake", recorded, "failed the shared-secret check"},
			{"oversized frame", header(transport.TypeHello, 256<<20), "exceeds the 4096-byte limit"},
		}
		for _, tc := range cases {
			c := dialRaw()
			c.Write(tc.send)
			refused(t, c, 15*time.Second)
			s.logged(t, tc.says)
		}
		for _, tc := range []struct {
			name, secret, says string
		}{
			{"wrong key", "not-the-secret", "failed the shared-secret check"},
			{"no key", "", "has no shared secret but this stage 1 requires one"},
		} {
			p := s.plan
			p.Secret = tc.secret
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := pipeline.OpenDriver(ctx, p, s.addr)
			cancel()
			if !errors.Is(err, transport.ErrAuth) {
				t.Errorf("%s: OpenDriver = %v; want ErrAuth", tc.name, err)
			}
			s.logged(t, tc.says)
		}
		if err := s.run(t, s.addr); err != nil {
			t.Errorf("legitimate run beside idle, slowloris and flooding peers: %v\nrank log:\n%s", err, s.local.Logs())
		}
		close(stop)
		wg.Wait()
		for _, c := range append(idle, slow) {
			refused(t, c, 15*time.Second) // the handshake deadline closes them
		}
		for _, c := range flood {
			c.Close()
		}
		s.logged(t, "no hello within")
	})

	t.Run("second driver is told the rank is busy", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		first, err := pipeline.OpenDriver(ctx, s.plan, s.addr)
		if err != nil {
			t.Fatal(err)
		}
		// The session starts once the rank has accepted; a frame through it makes sure.
		if _, err := first.Generate(ctx, engines.Request{Tokens: []int{1}, MaxTokens: 1}, func(engines.Token) error { return nil }); err != nil {
			t.Fatal(err)
		}
		_, err = pipeline.OpenDriver(ctx, s.plan, s.addr)
		if !errors.Is(err, transport.ErrBusy) || !strings.Contains(err.Error(), "busy serving driver") {
			t.Errorf("second OpenDriver = %v; want ErrBusy naming the session", err)
		}
		first.Close()
		if err := s.run(t, s.addr); err != nil {
			t.Errorf("legitimate run after the first driver left: %v", err)
		}
	})

	t.Run("idle session is closed", func(t *testing.T) {
		p := s.plan
		p.IdleTimeout = time.Second
		local, err := pipeline.Launch(context.Background(), exe, p)
		if err != nil {
			t.Fatal(err)
		}
		defer local.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		idle, err := pipeline.OpenDriver(ctx, p, local.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close()
		if _, err := idle.Generate(ctx, engines.Request{Tokens: []int{1}, MaxTokens: 1}, func(engines.Token) error { return nil }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the driver goes quiet past the rank's idle timeout
		if err := idle.Alive(ctx); err == nil {
			t.Errorf("a session idle past the rank's --idle-timeout is still open")
		}
		s.plan, p = p, s.plan
		err = s.run(t, local.Addr) // a new driver is served, not told "busy"
		s.plan = p
		if err != nil {
			t.Errorf("run after the idle session: %v\nrank log:\n%s", err, local.Logs())
		}
	})

	t.Run("next stage down is reported and the rank keeps listening", func(t *testing.T) {
		p := s.plan
		p.Split, err = pipeline.ParseSplit("0:2,2:3,3:4", cfg.NumLayers)
		if err != nil {
			t.Fatal(err)
		}
		p.NextTimeout = time.Second
		local, err := pipeline.Launch(context.Background(), exe, p)
		if err != nil {
			t.Fatal(err)
		}
		defer local.Stop()
		local.Process(2).Kill()
		for attempt := range 2 { // the rank must answer again after reporting
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			// The driver learns it when it assigns the split, or at the latest on its first step.
			d, err := pipeline.OpenDriver(ctx, p, local.Addr)
			if err == nil {
				_, err = d.Generate(ctx, s.req, func(engines.Token) error { return nil })
				d.Close()
			}
			cancel()
			if err == nil || !strings.Contains(err.Error(), "next stage 2 at") {
				t.Errorf("attempt %d: run with stage 2 down = %v; want stage 1 to report its next stage down", attempt, err)
			}
		}
	})

	t.Run("request beyond the context cap", func(t *testing.T) {
		p := s.plan
		p.Context = 8 // the rank's --context; the request needs 7 + 6 positions
		local, err := pipeline.Launch(context.Background(), exe, p)
		if err != nil {
			t.Fatal(err)
		}
		defer local.Stop()
		err = s.run(t, local.Addr)
		if !errors.Is(err, transport.ErrLimit) || !strings.Contains(err.Error(), "context cap of 8") {
			t.Errorf("run beyond the cap = %v; want ErrLimit naming the cap", err)
		}
	})

	// An authenticated driver that asks for the impossible: each Forward must be answered with an
	// error naming what is wrong, and the rank must keep serving.
	for _, tc := range []struct {
		name string
		fw   transport.Forward
		says string
	}{
		{"tap beyond the model", transport.Forward{Tokens: 1, Taps: []int{cfg.NumLayers + 5}}, "outside the model's"},
		{"draft distribution outside the vocabulary", transport.Forward{Tokens: 2, Outputs: 2, Sample: &transport.Sampling{Temperature: 1, Drafts: []int{1},
			Proposals: [][]transport.Prob{{{ID: int32(cfg.VocabSize), P: 1}}}}}, "outside the vocabulary"},
		{"draft distribution not summing to 1", transport.Forward{Tokens: 2, Outputs: 2, Sample: &transport.Sampling{Temperature: 1, Drafts: []int{1},
			Proposals: [][]transport.Prob{{{ID: 1, P: 0.25}}}}}, "sums to 0.25"},
		{"draft outside the vocabulary", transport.Forward{Tokens: 2, Outputs: 2, Sample: &transport.Sampling{Temperature: 1, Drafts: []int{cfg.VocabSize}}}, "outside the vocabulary"},
	} {
		t.Run("authenticated driver: "+tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id := func(stage int) transport.Identity {
				return transport.Identity{Model: fp, TotalLayers: cfg.NumLayers, DType: transport.Float32, Stage: stage, Start: split[stage].From, End: split[stage].To}
			}
			c, err := transport.Dial(ctx, s.addr, transport.Options{Self: id(0), Peer: id(1), Secret: hostileSecret})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Send(ctx, 1, 0, &transport.Reset{}); err != nil {
				t.Fatal(err)
			}
			fw := tc.fw
			fw.DType, fw.Shape, fw.Data = transport.Float32, []int{fw.Tokens, cfg.HiddenSize}, make([]byte, 4*fw.Tokens*cfg.HiddenSize)
			var reply transport.Reply
			if err := c.Call(ctx, 1, 1, &fw, &reply); err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("Forward with a %s answered %v; want an error saying %q", tc.name, err, tc.says)
			}
			c.Close()
			if err := s.run(t, s.addr); err != nil {
				t.Errorf("legitimate run after a %s: %v\nrank log:\n%s", tc.name, err, s.local.Logs())
			}
		})
	}

	// Frame attacks: a man in the middle without the secret tampers with a live session's
	// first Forward frame; the rank must refuse it, and then serve a legitimate run.
	for _, tc := range []struct {
		name   string
		tamper func(prev, frame []byte) (send []byte, hangUp bool)
		says   string
	}{
		{"replayed frame", func(prev, _ []byte) ([]byte, bool) { return prev, false }, "failed authentication"},
		{"altered frame", func(_, f []byte) ([]byte, bool) {
			f = bytes.Clone(f)
			f[len(f)-20] ^= 0x40
			return f, false
		}, "failed authentication"},
		{"truncated frame", func(_, f []byte) ([]byte, bool) { return f[:len(f)/2], true }, "truncated forward frame"},
		{"oversized frame", func(_, f []byte) ([]byte, bool) { return header(transport.TypeForward, 1<<30), false }, "exceeds the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mitm := newProxy(t, s.addr, func(i int, prev, f []byte) ([]byte, bool) {
				if i != 4 { // Hello, Auth, Assign, Reset, then the first Forward
					return f, false
				}
				return tc.tamper(prev, f)
			})
			if err := s.run(t, mitm.addr()); err == nil {
				t.Errorf("run through a tampering proxy succeeded; want the rank to refuse")
			}
			s.logged(t, tc.says)
			if err := s.run(t, s.addr); err != nil {
				t.Errorf("legitimate run after a %s: %v\nrank log:\n%s", tc.name, err, s.local.Logs())
			}
		})
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	b[0] = 'X' // never the magic
	return b
}

// header is a frame header announcing n payload bytes that never come.
func header(t transport.Type, n uint32) []byte {
	b := []byte("HIPO")
	b = append(b, transport.Version, byte(t), 0, 0)
	b = binary.LittleEndian.AppendUint64(b, 0)
	b = binary.LittleEndian.AppendUint64(b, 0)
	return binary.LittleEndian.AppendUint32(b, n)
}

// proxy relays one connection at a time to a rank, frame by frame from the dialer, letting
// tamper replace the i-th frame (or hang up after it); it records what the dialer sent.
type proxy struct {
	ln     net.Listener
	mu     sync.Mutex
	sent   bytes.Buffer
	tamper func(i int, prev, frame []byte) ([]byte, bool)
}

func newProxy(t *testing.T, target string, tamper func(i int, prev, frame []byte) ([]byte, bool)) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, tamper: tamper}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.relay(c, target)
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) upstream() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.sent.Bytes())
}

func (p *proxy) relay(c net.Conn, target string) {
	defer c.Close()
	r, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer r.Close()
	go func() { io.Copy(c, r); c.Close() }()
	var prev []byte
	for i := 0; ; i++ {
		h := make([]byte, transport.HeaderSize)
		if _, err := io.ReadFull(c, h); err != nil {
			return
		}
		f := make([]byte, transport.HeaderSize+int(binary.LittleEndian.Uint32(h[24:])))
		copy(f, h)
		if _, err := io.ReadFull(c, f[transport.HeaderSize:]); err != nil {
			return
		}
		p.mu.Lock()
		p.sent.Write(f)
		p.mu.Unlock()
		send, hangUp := f, false
		if p.tamper != nil {
			send, hangUp = p.tamper(i, prev, f)
		}
		if _, err := r.Write(send); err != nil || hangUp {
			return
		}
		prev = f
	}
}
