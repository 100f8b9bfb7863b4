package transport

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// The handshake, dialer D and listener L:
//
//	D -> L  Hello{From, Expect, Secret, NonceD}
//	L -> D  HelloAck{Self, Secret, NonceL, MAC_L}   (always sent, so D can phrase its refusal)
//	D -> L  Auth{MAC_D}                             (only when both hold a secret)
//	L -> D  Auth{}                                  (confirmation)
//
// Both sides compare the identities and the presence of a secret independently, so each one
// refuses with an error phrased from its own side. With a secret, MAC_L and MAC_D are
// HMAC-SHA256(secret, label || SHA-256(Hello payload || HelloAck payload with a zero MAC)),
// with different labels for the two directions: each side proves knowledge of the secret over
// the other's fresh nonce, and the identities exchanged are bound into the proof.

const (
	labelListener = "hippo transport v1 listener\x00"
	labelDialer   = "hippo transport v1 dialer\x00"
)

func transcript(hello []byte, ack HelloAck) ([]byte, error) {
	ack.MAC = [32]byte{}
	ab, err := ack.AppendBinary(nil)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(hello)
	h.Write(ab)
	return h.Sum(nil), nil
}

func mac(secret, label string, transcript []byte) [32]byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(label))
	m.Write(transcript)
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// compare checks the identity a dialer expects against the one a listener has. dialer and
// listener name the two sides from the point of view of the caller ("stage 1 at addr", "driver").
// It returns the error code and the refusal, or 0 and nil if they match.
func compare(expect, have Identity, wantSide, haveSide string) (Code, error) {
	switch {
	case expect.Model != have.Model:
		return CodeModel, fmt.Errorf("transport: %s runs model %s, %s has %s: start the rank with the same checkpoint: %w",
			haveSide, orNone(have.Model), wantSide, orNone(expect.Model), ErrModelMismatch)
	case expect.TotalLayers != have.TotalLayers:
		return CodeModel, fmt.Errorf("transport: %s has a %d-layer model, %s has %d layers: start the rank with the same checkpoint: %w",
			haveSide, have.TotalLayers, wantSide, expect.TotalLayers, ErrModelMismatch)
	case expect.DType != have.DType:
		return CodeModel, fmt.Errorf("transport: %s exchanges %s hidden states, %s uses %s: start both with the same dtype: %w",
			haveSide, have.DType, wantSide, expect.DType, ErrModelMismatch)
	case expect.Stage != have.Stage:
		return CodeRange, fmt.Errorf("transport: %s is stage %d, %s expects stage %d there: check the rank's --stage and the address list: %w",
			haveSide, have.Stage, wantSide, expect.Stage, ErrRange)
	case expect.Start != have.Start || expect.End != have.End:
		return CodeRange, fmt.Errorf("transport: %s runs layers [%d,%d), %s planned [%d,%d): restart the rank with the planned split: %w",
			haveSide, have.Start, have.End, wantSide, expect.Start, expect.End, ErrRange)
	}
	return 0, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// handshakeCtx bounds the handshake by HandshakeTimeout as well as ctx. Its cancel function
// also disarms the connection from that context, which ends with the handshake.
func (c *Conn) handshakeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.HandshakeTimeout)
	return ctx, func() {
		c.readArm.disarm()
		c.writeArm.disarm()
		cancel()
	}
}

// refuse tells the peer why we refuse (best effort: it may already be gone) and closes.
func (c *Conn) refuse(code Code, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c.Send(ctx, 0, 0, &Error{Code: code, Message: strings.TrimPrefix(err.Error(), "transport: ")})
	c.nc.Close()
}

// handshakeError rephrases what went wrong while reading during the handshake.
func handshakeError(peer string, err error) error {
	var ve *versionError
	if errors.As(err, &ve) {
		return fmt.Errorf("transport: %s speaks wire version %d, this build speaks %d: run the same hippo build on every rank: %w",
			peer, ve.got, ve.want, ErrVersion)
	}
	var named *peerError
	if errors.As(err, &named) {
		return err // already names the peer (and, for a refusal, what it refused)
	}
	return &peerError{peer: "handshake with " + peer, err: err}
}

// Client runs the dialer's side of the handshake on nc, which it owns from then on (it is
// closed on failure), and returns the connection. Dial calls it; call it directly to run the
// protocol over another transport (net.Pipe in tests).
func Client(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	addr := nc.RemoteAddr().String()
	peerSide := fmt.Sprintf("%s at %s", roleName(opts.Peer.Stage), addr)
	selfSide := roleName(opts.Self.Stage)
	if err := opts.Self.Validate(); err != nil {
		nc.Close()
		return nil, err
	}
	if err := opts.Peer.Validate(); err != nil {
		nc.Close()
		return nil, err
	}
	nc = tune(nc, opts, opts.Seed)
	c := newConn(nc, opts, fmt.Sprintf("%s (%s)", roleName(opts.Peer.Stage), addr))
	ctx, cancel := c.handshakeCtx(ctx)
	defer cancel()

	hello := Hello{From: opts.Self.Stage, Expect: opts.Peer, Secret: opts.Secret != ""}
	rand.Read(hello.Nonce[:])
	if err := c.Send(ctx, 0, 0, &hello); err != nil {
		c.nc.Close()
		return nil, err
	}
	f, err := c.recv(ctx, time.Time{}, "no handshake answer")
	if err != nil {
		c.nc.Close()
		return nil, handshakeError(peerSide, err)
	}
	var ack HelloAck
	if err := f.Decode(&ack); err != nil {
		c.refuse(CodeBadFrame, err)
		return nil, handshakeError(peerSide, err)
	}
	if ack.Self.Stage != opts.Peer.Stage {
		peerSide = "the rank at " + addr // not the stage we dialled
	}
	if code, err := compare(opts.Peer, ack.Self, selfSide, peerSide); err != nil {
		c.refuse(code, err)
		return nil, err
	}
	c.peer = ack.Self
	switch {
	case hello.Secret && !ack.Secret:
		err := fmt.Errorf("transport: %s has no shared secret but this %s has one: set the same --secret or %s on every rank, or on none: %w",
			peerSide, selfSide, SecretEnv, ErrAuth)
		c.refuse(CodeAuth, err)
		return nil, err
	case !hello.Secret && ack.Secret:
		err := fmt.Errorf("transport: %s requires a shared secret and this %s has none: set --secret or %s here too: %w",
			peerSide, selfSide, SecretEnv, ErrAuth)
		c.refuse(CodeAuth, err)
		return nil, err
	case !hello.Secret:
		return c, nil
	}
	helloBytes, _ := hello.AppendBinary(nil)
	tr, err := transcript(helloBytes, ack)
	if err != nil {
		c.refuse(CodeBadFrame, err)
		return nil, handshakeError(peerSide, err)
	}
	if want := mac(opts.Secret, labelListener, tr); !hmac.Equal(ack.MAC[:], want[:]) {
		err := fmt.Errorf("transport: %s failed the shared-secret check: use the same --secret or %s on every rank: %w",
			peerSide, SecretEnv, ErrAuth)
		c.refuse(CodeAuth, err)
		return nil, err
	}
	if err := c.Send(ctx, 0, 1, &Auth{MAC: mac(opts.Secret, labelDialer, tr)}); err != nil {
		c.nc.Close()
		return nil, err
	}
	f, err = c.recv(ctx, time.Time{}, "no handshake confirmation")
	if err != nil {
		c.nc.Close()
		return nil, handshakeError(peerSide, err)
	}
	var ok Auth
	if err := f.Decode(&ok); err != nil {
		c.refuse(CodeBadFrame, err)
		return nil, handshakeError(peerSide, err)
	}
	return c, nil
}

// Server runs the listener's side of the handshake on nc, which it owns from then on (it is
// closed on failure), and returns the connection. Listener.Accept calls it.
func Server(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	addr := nc.RemoteAddr().String()
	if err := opts.Self.Validate(); err != nil {
		nc.Close()
		return nil, err
	}
	nc = tune(nc, opts, opts.Seed^0x5bd1e995)
	c := newConn(nc, opts, fmt.Sprintf("unidentified rank (%s)", addr))
	ctx, cancel := c.handshakeCtx(ctx)
	defer cancel()
	selfSide := fmt.Sprintf("this %s", roleName(opts.Self.Stage))
	if opts.Self.Stage == 0 {
		selfSide = "this rank"
	}

	f, err := c.recv(ctx, time.Time{}, "no hello")
	if err != nil {
		err = handshakeError(fmt.Sprintf("the rank at %s", addr), err)
		c.refuse(codeOf(err), err)
		return nil, err
	}
	var hello Hello
	if err := f.Decode(&hello); err != nil {
		err = handshakeError(fmt.Sprintf("the rank at %s", addr), err)
		c.refuse(codeOf(err), err)
		return nil, err
	}
	peerSide := fmt.Sprintf("%s at %s", roleName(hello.From), addr)
	if hello.Expect.Stage != opts.Self.Stage {
		selfSide = "this rank"
	}
	c.name = fmt.Sprintf("%s (%s)", roleName(hello.From), addr)
	c.peer = hello.Expect

	ack := HelloAck{Self: opts.Self, Secret: opts.Secret != ""}
	rand.Read(ack.Nonce[:])
	var tr []byte
	if hello.Secret && ack.Secret {
		if tr, err = transcript(f.Payload, ack); err != nil {
			c.refuse(CodeInternal, err)
			return nil, err
		}
		ack.MAC = mac(opts.Secret, labelListener, tr)
	}
	// The ack goes out even when we refuse below: the dialer then refuses with a message
	// phrased from its own side.
	if err := c.Send(ctx, 0, 0, &ack); err != nil {
		c.nc.Close()
		return nil, err
	}
	if _, err := compare(hello.Expect, opts.Self, peerSide, selfSide); err != nil {
		c.nc.Close()
		return nil, err
	}
	switch {
	case hello.Secret && !ack.Secret:
		c.nc.Close()
		return nil, fmt.Errorf("transport: %s sent a shared-secret challenge but %s has no secret: set the same --secret or %s on every rank, or on none: %w",
			peerSide, selfSide, SecretEnv, ErrAuth)
	case !hello.Secret && ack.Secret:
		c.nc.Close()
		return nil, fmt.Errorf("transport: %s has no shared secret but %s requires one: set --secret or %s on that rank too: %w",
			peerSide, selfSide, SecretEnv, ErrAuth)
	case !hello.Secret:
		return c, nil
	}
	f, err = c.recv(ctx, time.Time{}, "no handshake answer")
	if err != nil {
		c.nc.Close()
		return nil, handshakeError(peerSide, err)
	}
	var auth Auth
	if err := f.Decode(&auth); err != nil {
		err = handshakeError(peerSide, err)
		c.refuse(CodeBadFrame, err)
		return nil, err
	}
	if want := mac(opts.Secret, labelDialer, tr); !hmac.Equal(auth.MAC[:], want[:]) {
		err := fmt.Errorf("transport: %s failed the shared-secret check: use the same --secret or %s on every rank: %w",
			peerSide, SecretEnv, ErrAuth)
		c.refuse(CodeAuth, err)
		return nil, err
	}
	if err := c.Send(ctx, 0, 1, &Auth{}); err != nil {
		c.nc.Close()
		return nil, err
	}
	return c, nil
}
