package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdConn captures what is written through it instead of sending it while hold is set, so a
// test can play a man in the middle with the captured frames.
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	held [][]byte
}

func (h *holdConn) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		h.held = append(h.held, bytes.Clone(b))
		return len(b), nil
	}
	return h.Conn.Write(b)
}

// sealedPair handshakes a dialer and a listener (both holding secret) over loopback TCP and
// returns them with the dialer's raw connection.
func sealedPair(t *testing.T, secret string) (d, l *Conn, raw *holdConn) {
	t.Helper()
	a, b := tcpPair(t)
	raw = &holdConn{Conn: a}
	ctx := context.Background()
	type result struct {
		c   *Conn
		err error
	}
	rc := make(chan result, 1)
	go func() {
		c, err := Server(ctx, b, Options{Secret: secret, Self: Identity{Stage: 1}})
		rc <- result{c, err}
	}()
	d, err := Client(ctx, raw, Options{Secret: secret, Peer: Identity{Stage: 1}})
	if err != nil {
		t.Fatalf("Client = %v", err)
	}
	r := <-rc
	if r.err != nil {
		t.Fatalf("Server = %v", r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c, raw
}

// TestSealedFramesRefuseTampering plays a man in the middle who knows no secret: every frame it
// replays, reorders, drops, alters or truncates is refused by the receiver, naming the peer.
func TestSealedFramesRefuseTampering(t *testing.T) {
	for _, tc := range []struct {
		name string
		// play gets the two captured frames the dialer sent (Reset 1, Reset 2) and returns
		// the bytes the receiver gets instead; the first Reset already arrived intact when
		// deliverFirst is set.
		deliverFirst bool
		play         func(f1, f2 []byte) []byte
		want         error
		says         string
	}{
		{name: "replayed frame", deliverFirst: true, play: func(f1, _ []byte) []byte { return f1 }, want: ErrAuth, says: "frame 2 failed authentication"},
		{name: "reordered frames", play: func(f1, f2 []byte) []byte { return append(bytes.Clone(f2), f1...) }, want: ErrAuth, says: "failed authentication"},
		{name: "dropped frame", play: func(_, f2 []byte) []byte { return f2 }, want: ErrAuth, says: "failed authentication"},
		{name: "altered payload", play: func(f1, _ []byte) []byte {
			b := bytes.Clone(f1)
			b[HeaderSize] ^= 1
			return b
		}, want: ErrAuth, says: "failed authentication"},
		{name: "altered header", play: func(f1, _ []byte) []byte {
			b := bytes.Clone(f1)
			b[16] ^= 1 // the sequence number
			return b
		}, want: ErrAuth, says: "failed authentication"},
		{name: "shortened frame", play: func(f1, _ []byte) []byte {
			b := bytes.Clone(f1[:len(f1)-1])
			binary.LittleEndian.PutUint32(b[24:], uint32(len(b)-HeaderSize))
			return b
		}, want: ErrAuth, says: "failed authentication"},
		{name: "truncated stream", play: func(f1, _ []byte) []byte { return f1[:len(f1)-3] }, want: ErrBadFrame, says: "truncated reset frame"},
		{name: "forged frame in the clear", play: func(_, _ []byte) []byte {
			b, _ := AppendFrame(nil, Frame{Type: TypeReset, Payload: make([]byte, 4)})
			return b
		}, want: ErrAuth, says: "failed authentication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, l, raw := sealedPair(t, "s3cret")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			raw.mu.Lock()
			raw.hold = true
			raw.mu.Unlock()
			for _, pos := range []int{1, 2} {
				if err := d.Send(ctx, 7, uint64(pos), &Reset{Position: pos}); err != nil {
					t.Fatal(err)
				}
			}
			raw.mu.Lock()
			f1, f2 := raw.held[0], raw.held[1]
			raw.mu.Unlock()
			if tc.deliverFirst {
				raw.Conn.Write(f1)
				f, err := l.Recv(ctx)
				if err != nil || f.Type != TypeReset {
					t.Fatalf("Recv of the intact frame = %v, %v; want a reset", f.Type, err)
				}
			}
			raw.Conn.Write(tc.play(f1, f2))
			if tc.want == ErrBadFrame {
				raw.Conn.(*net.TCPConn).CloseWrite()
			}
			_, err := l.Recv(ctx)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Recv after a %s = %v; want %v", tc.name, err, tc.want)
			}
			if !strings.Contains(err.Error(), "driver (127.0.0.1:") || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("Recv error = %q; want it to name the peer and contain %q", err, tc.says)
			}
		})
	}
}

// TestSealedFramesCarryNoPlaintext checks that a decode-step payload is not readable on the wire.
func TestSealedFramesCarryNoPlaintext(t *testing.T) {
	d, l, raw := sealedPair(t, "")
	ctx := context.Background()
	raw.mu.Lock()
	raw.hold = true
	raw.mu.Unlock()
	fw := &Forward{Tokens: 1, DType: BFloat16, Shape: []int{1, 8}, Data: []byte("0123456789abcdef")}
	if err := d.Send(ctx, 1, 1, fw); err != nil {
		t.Fatal(err)
	}
	raw.mu.Lock()
	sent := raw.held[0]
	raw.mu.Unlock()
	if bytes.Contains(sent, []byte("0123456789")) {
		t.Errorf("sealed forward frame carries its data in the clear")
	}
	if got, want := len(sent), HeaderSize+mustLen(t, fw)+Overhead; got != want {
		t.Errorf("sealed frame is %d bytes; want %d", got, want)
	}
	raw.Conn.Write(sent)
	f, err := l.Recv(ctx)
	if err != nil {
		t.Fatalf("Recv = %v", err)
	}
	var got Forward
	if err := f.Decode(&got); err != nil || !bytes.Equal(got.Data, fw.Data) {
		t.Errorf("Recv decoded %q, %v; want %q", got.Data, err, fw.Data)
	}
}

func mustLen(t *testing.T, m Message) int {
	t.Helper()
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}
