package transport

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestListenerOutlastsStallsAndFloods holds idle, trickling and flooding connections open to a
// listener while a legitimate dialer connects: its handshake must not wait for theirs.
func TestListenerOutlastsStallsAndFloods(t *testing.T) {
	const secret = "s3cret"
	ln, err := Listen(context.Background(), "127.0.0.1:0", Options{Secret: secret, HandshakeTimeout: 5 * time.Second, MaxPending: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	var socks []net.Conn
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	dial := func() net.Conn {
		s, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, s)
		return s
	}
	for range 3 {
		dial() // idle
	}
	trickle := dial()
	stopTrickle := make(chan struct{})
	defer close(stopTrickle)
	go func() {
		for _, b := range []byte("HIPO") {
			select {
			case <-stopTrickle:
				return
			case <-time.After(200 * time.Millisecond):
			}
			trickle.Write([]byte{b})
		}
	}()
	for range 64 {
		dial() // flood, bounded
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // < HandshakeTimeout
	defer cancel()
	accepted := make(chan *Conn, 1)
	go func() {
		for ctx.Err() == nil {
			if c, err := ln.Accept(ctx); err == nil {
				accepted <- c
				return
			}
		}
	}()
	c, err := Dial(ctx, addr, Options{Secret: secret})
	if err != nil {
		t.Fatalf("Dial beside stalled and flooding peers = %v; want a connection before their handshakes time out", err)
	}
	defer c.Close()
	select {
	case lc := <-accepted:
		lc.Close()
	case <-ctx.Done():
		t.Fatal("the listener did not hand over the legitimate connection")
	}
}

// TestListenerAdmitRefuses checks that an authenticated peer refused by Admit gets its reason.
func TestListenerAdmitRefuses(t *testing.T) {
	busy := errors.New("transport: stage 1 is busy serving another driver: wait for it to finish")
	ln, err := Listen(context.Background(), "127.0.0.1:0", Options{Secret: "k", Self: Identity{Stage: 1},
		Admit: func(Identity) error { return &Error{Code: CodeBusy, Message: busy.Error()} }})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go ln.Accept(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Dial(ctx, ln.Addr().String(), Options{Secret: "k", Peer: Identity{Stage: 1}})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "busy serving another driver") {
		t.Errorf("Dial to a busy listener = %v; want ErrBusy with the reason", err)
	}
}

// TestRecvIdleTimeout: a session whose peer goes quiet ends after IdleTimeout, naming the peer.
func TestRecvIdleTimeout(t *testing.T) {
	a, b := tcpPair(t)
	go Client(context.Background(), a, Options{})
	c, err := Server(context.Background(), b, Options{IdleTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Recv(context.Background())
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "driver (127.0.0.1:") {
		t.Errorf("Recv from a silent peer = %v; want ErrTimeout naming it", err)
	}
}
