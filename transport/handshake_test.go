package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// handshake runs Dial against Listen+Accept on 127.0.0.1 and returns both sides' results.
func handshake(t *testing.T, dialer, listener Options) (dc, lc *Conn, derr, lerr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := Listen(ctx, "127.0.0.1:0", listener)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lc, lerr = ln.Accept(ctx)
	}()
	dc, derr = Dial(ctx, ln.Addr().String(), dialer)
	wg.Wait()
	t.Cleanup(func() {
		if dc != nil {
			dc.Close()
		}
		if lc != nil {
			lc.Close()
		}
	})
	return dc, lc, derr, lerr
}

func TestHandshake(t *testing.T) {
	stage1 := Identity{Model: "abc123", TotalLayers: 28, DType: BFloat16, Stage: 1, Start: 14, End: 28}
	driver := Identity{Model: "abc123", TotalLayers: 28, DType: BFloat16, Stage: 0, Start: 0, End: 14}
	with := func(id Identity, edit func(*Identity)) Identity {
		edit(&id)
		return id
	}
	for _, tc := range []struct {
		name          string
		dialer        Options
		listener      Options
		want          error  // both sides, nil for success
		dialerSays    string // substring of the dialer's error
		listenerSays  string // substring of the listener's error
		listenerError bool   // the listener's error is the one to check (else only the sentinel)
	}{
		{
			name:     "zero options",
			dialer:   Options{},
			listener: Options{},
		},
		{
			name:     "identities match",
			dialer:   Options{Self: driver, Peer: stage1},
			listener: Options{Self: stage1},
		},
		{
			name:     "identities and secret match",
			dialer:   Options{Self: driver, Peer: stage1, Secret: "s3cret"},
			listener: Options{Self: stage1, Secret: "s3cret"},
		},
		{
			name:         "model hash differs",
			dialer:       Options{Self: driver, Peer: with(stage1, func(id *Identity) { id.Model = "def456" })},
			listener:     Options{Self: stage1},
			want:         ErrModelMismatch,
			dialerSays:   "runs model abc123, driver has def456: start the rank with the same checkpoint",
			listenerSays: "this stage 1 runs model abc123, driver at 127.0.0.1:",
		},
		{
			name:       "layer count differs",
			dialer:     Options{Self: driver, Peer: with(stage1, func(id *Identity) { id.TotalLayers = 36; id.End = 36 })},
			listener:   Options{Self: stage1},
			want:       ErrModelMismatch,
			dialerSays: "has a 28-layer model, driver has 36 layers",
		},
		{
			name:       "dtype differs",
			dialer:     Options{Self: driver, Peer: with(stage1, func(id *Identity) { id.DType = Float32 })},
			listener:   Options{Self: stage1},
			want:       ErrModelMismatch,
			dialerSays: "exchanges bf16 hidden states, driver uses f32",
		},
		{
			name:       "layer range differs",
			dialer:     Options{Self: driver, Peer: with(stage1, func(id *Identity) { id.Start = 10 })},
			listener:   Options{Self: stage1},
			want:       ErrRange,
			dialerSays: "runs layers [14,28), driver planned [10,28)",
		},
		{
			name:       "stage index differs",
			dialer:     Options{Self: driver, Peer: with(stage1, func(id *Identity) { id.Stage = 2 })},
			listener:   Options{Self: stage1},
			want:       ErrRange,
			dialerSays: "is stage 1, driver expects stage 2",
		},
		{
			name:         "wrong secret",
			dialer:       Options{Self: driver, Peer: stage1, Secret: "right"},
			listener:     Options{Self: stage1, Secret: "wrong"},
			want:         ErrAuth,
			dialerSays:   "stage 1 at 127.0.0.1:",
			listenerSays: "failed the shared-secret check (another secret, or the handshake was tampered with): give every rank and the driver the same secret through $HIPPO_SECRET or --secret-file",
		},
		{
			name:         "dialer has a secret, listener none",
			dialer:       Options{Self: driver, Peer: stage1, Secret: "s3cret"},
			listener:     Options{Self: stage1},
			want:         ErrAuth,
			dialerSays:   "has no shared secret but this driver has one",
			listenerSays: "holds a shared secret but this stage 1 has none",
		},
		{
			name:         "listener requires a secret, dialer has none",
			dialer:       Options{Self: driver, Peer: stage1},
			listener:     Options{Self: stage1, Secret: "s3cret"},
			want:         ErrAuth,
			dialerSays:   "requires a shared secret and this driver has none: set $HIPPO_SECRET or --secret-file here too",
			listenerSays: "has no shared secret but this stage 1 requires one",
		},
		{
			name:         "dialer speaks a newer version",
			dialer:       Options{Self: driver, Peer: stage1, version: Version + 1},
			listener:     Options{Self: stage1},
			want:         ErrVersion,
			dialerSays:   fmt.Sprintf("speaks wire version %d, this build speaks %d: run the same hippo build on every rank", Version, Version+1),
			listenerSays: fmt.Sprintf("speaks wire version %d, this build speaks %d", Version+1, Version),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc, lc, derr, lerr := handshake(t, tc.dialer, tc.listener)
			if tc.want == nil {
				if derr != nil || lerr != nil {
					t.Fatalf("handshake: dialer %v, listener %v; want both to succeed", derr, lerr)
				}
				if got := dc.Peer(); got != tc.listener.Self {
					t.Errorf("dialer sees peer %+v; want %+v", got, tc.listener.Self)
				}
				if got := lc.Peer(); got != tc.dialer.Peer {
					t.Errorf("listener sees expectation %+v; want %+v", got, tc.dialer.Peer)
				}
				return
			}
			t.Logf("dialer:   %v", derr)
			t.Logf("listener: %v", lerr)
			if !errors.Is(derr, tc.want) {
				t.Errorf("dialer error = %v; want %v", derr, tc.want)
			}
			if !errors.Is(lerr, tc.want) {
				t.Errorf("listener error = %v; want %v", lerr, tc.want)
			}
			if derr != nil && !strings.Contains(derr.Error(), tc.dialerSays) {
				t.Errorf("dialer error = %q; want it to contain %q", derr, tc.dialerSays)
			}
			if lerr != nil && !strings.Contains(lerr.Error(), tc.listenerSays) {
				t.Errorf("listener error = %q; want it to contain %q", lerr, tc.listenerSays)
			}
		})
	}
}

// TestHandshakeModelMismatchMessage pins the whole refusal, as a user reads it.
func TestHandshakeModelMismatchMessage(t *testing.T) {
	stage1 := Identity{Model: "abc123", TotalLayers: 28, Stage: 1, Start: 14, End: 28}
	expect := stage1
	expect.Model = "def456"
	_, _, derr, _ := handshake(t, Options{Peer: expect}, Options{Self: stage1})
	if derr == nil {
		t.Fatal("handshake succeeded; want a refusal")
	}
	got := derr.Error()
	if !strings.HasPrefix(got, "transport: stage 1 at 127.0.0.1:") ||
		!strings.HasSuffix(got, " runs model abc123, driver has def456: start the rank with the same checkpoint: model mismatch") {
		t.Errorf("error = %q; want \"transport: stage 1 at 127.0.0.1:PORT runs model abc123, driver has def456: start the rank with the same checkpoint: model mismatch\"", got)
	}
}

func TestHandshakeRejectsInvalidOwnRange(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	_, err := Client(context.Background(), a, Options{Self: Identity{TotalLayers: 28, Start: 20, End: 10}})
	if !errors.Is(err, ErrRange) || !strings.Contains(err.Error(), "[20,10) is not inside the model's 28 layers") {
		t.Errorf("Client with layers [20,10) = %v; want an ErrRange that names the range", err)
	}
}

// recorder keeps a copy of everything written through a connection.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	r.out.Write(b)
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.out.Bytes())
}

// TestHandshakeRevealsNothing checks that neither the secret nor either side's identity crosses
// the wire readably: identities travel only in sealed frames.
func TestHandshakeRevealsNothing(t *testing.T) {
	const secret = "correct horse battery staple"
	stage1 := Identity{Model: "fingerprint-abc123", TotalLayers: 28, Stage: 1, Start: 14, End: 28}
	a, b := tcpPair(t)
	ra, rb := &recorder{Conn: a}, &recorder{Conn: b}
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() {
		c, err := Server(ctx, rb, Options{Self: stage1, Secret: secret})
		if c != nil {
			defer c.Close()
		}
		errc <- err
	}()
	c, err := Client(ctx, ra, Options{Peer: stage1, Secret: secret})
	if err != nil {
		t.Fatalf("Client = %v", err)
	}
	defer c.Close()
	if err := <-errc; err != nil {
		t.Fatalf("Server = %v", err)
	}
	for name, r := range map[string]*recorder{"dialer": ra, "listener": rb} {
		out := r.bytes()
		if bytes.Contains(out, []byte(secret)) || bytes.Contains(out, []byte("battery")) {
			t.Errorf("the %s sent the secret over the wire", name)
		}
		if bytes.Contains(out, []byte("abc123")) {
			t.Errorf("the %s sent an identity in the clear", name)
		}
	}
}

// TestHandshakeStraysAreRefused connects something that is not a hippo rank.
func TestHandshakeStraysAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		send []byte
		want error
	}{
		{name: "http client", send: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: ErrBadFrame},
		{name: "reply instead of hello", send: frameBytes("HIPO", Version, byte(TypeReply), 0, 10, make([]byte, 10)), want: ErrBadFrame},
		{name: "silent client", send: nil, want: ErrTimeout},
		{name: "oversized hello", send: frameBytes("HIPO", Version, byte(TypeHello), 0, 1<<20, make([]byte, 64)), want: ErrTooLarge},
		{name: "replayed sealed auth", send: append(frameBytes("HIPO", Version, byte(TypeHello), 0, 33, make([]byte, 33)),
			frameBytes("HIPO", Version, byte(TypeAuth), 0, 40, make([]byte, 40))...), want: ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tcpPair(t)
			go a.Write(tc.send)
			_, err := Server(context.Background(), b, Options{HandshakeTimeout: 300 * time.Millisecond})
			if !errors.Is(err, tc.want) {
				t.Errorf("Server after %q = %v; want %v", tc.send, err, tc.want)
			}
		})
	}
}

// FuzzHandshake feeds arbitrary bytes to the listener's side of the handshake, as a stranger
// on the network could: it must refuse them (nobody without the secret gets through) and never
// panic or hang.
func FuzzHandshake(f *testing.F) {
	hello, _ := AppendFrame(nil, Frame{Type: TypeHello, Payload: make([]byte, 33)})
	f.Add(hello)
	f.Add(append(hello, frameBytes("HIPO", Version, byte(TypeAuth), 0, 40, make([]byte, 40))...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go func() {
			a.Write(data)
			a.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := Server(ctx, b, Options{Secret: "s3cret", HandshakeTimeout: time.Second})
		if err == nil {
			c.Close()
			t.Fatalf("Server accepted %q without the secret", data)
		}
	})
}
