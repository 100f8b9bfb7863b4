package transport

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// The handshake, dialer D and listener L:
//
//	D -> L  Hello{has-secret, NonceD}          in the clear
//	L -> D  HelloAck{has-secret, NonceL}       in the clear
//	        both derive the per-direction session keys (seal.go) and seal from here on
//	D -> L  Auth{D's stage, identity D expects}  sealed with D's key
//	L -> D  Auth{L's stage, L's identity}        sealed with L's key, only after D's Auth opened
//
// Nothing but the presence of a secret is revealed before a peer proves it derived the same keys:
// L opens D's Auth only if D knows the secret (the keys depend on L's fresh nonce, so a recorded
// handshake cannot be replayed), and only then sends its identity, which D in turn can open only
// if L knows the secret. Both sides then compare the identities independently, so each one
// refuses with an error phrased from its own side.

const secretFix = "give every rank and the driver the same secret through $" + SecretEnv + " or --secret-file"

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
	case expect.Unassigned() || have.Unassigned():
		// One side waits for the split: the driver's Assign settles it after the handshake.
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
	if errors.Is(err, ErrAuth) && !errors.As(err, new(*Error)) {
		// A sealed handshake frame that does not open: the peer derived other keys.
		return fmt.Errorf("transport: %s failed the shared-secret check (another secret, or the handshake was tampered with): %s: %w",
			peer, secretFix, ErrAuth)
	}
	var named *peerError
	if errors.As(err, &named) {
		return err // already names the peer (and, for a refusal, what it refused)
	}
	return &peerError{peer: "handshake with " + peer, err: err}
}

// secretMismatch phrases a handshake where only one side holds a secret, from the side of self.
func secretMismatch(peerSide, selfSide string, selfHas bool) error {
	if selfHas {
		return fmt.Errorf("transport: %s has no shared secret but %s has one: %s: %w", peerSide, selfSide, secretFix, ErrAuth)
	}
	return fmt.Errorf("transport: %s requires a shared secret and %s has none: %s: %w", peerSide, selfSide, secretFix, ErrAuth)
}

// Client runs the dialer's side of the handshake on nc, which it owns from then on (it is
// closed on failure), and returns the connection. Dial calls it; call it directly to run the
// protocol over another transport (net.Pipe in tests).
func Client(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	addr := nc.RemoteAddr().String()
	peerSide := fmt.Sprintf("%s at %s", roleName(opts.Peer.Stage), addr)
	selfSide := "this " + roleName(opts.Self.Stage)
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

	hello := Hello{Secret: opts.Secret != ""}
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
	if ack.Secret != hello.Secret {
		err := secretMismatch(peerSide, selfSide, hello.Secret)
		if !hello.Secret {
			err = fmt.Errorf("transport: %s requires a shared secret and %s has none: set $%s or --secret-file here too: %w",
				peerSide, selfSide, SecretEnv, ErrAuth)
		}
		c.refuse(CodeAuth, err)
		return nil, err
	}
	hb, _ := hello.AppendBinary(nil)
	ab, _ := ack.AppendBinary(nil)
	d2l, l2d, err := sessionKeys(opts.Secret, hb, ab)
	if err != nil {
		c.nc.Close()
		return nil, err
	}
	if !opts.plaintext {
		c.startSealing(d2l, l2d)
	}

	if err := c.Send(ctx, 0, 1, &Auth{Stage: opts.Self.Stage, Identity: opts.Peer}); err != nil {
		c.nc.Close()
		return nil, err
	}
	f, err = c.recv(ctx, time.Time{}, "no handshake answer")
	if err != nil {
		c.nc.Close()
		return nil, handshakeError(peerSide, err)
	}
	var theirs Auth
	if err := f.Decode(&theirs); err != nil {
		c.refuse(CodeBadFrame, err)
		return nil, handshakeError(peerSide, err)
	}
	if theirs.Identity.Stage != opts.Peer.Stage {
		peerSide = "the rank at " + addr // not the stage we dialled
	}
	if code, err := compare(opts.Peer, theirs.Identity, selfSide[len("this "):], peerSide); err != nil {
		c.refuse(code, err)
		return nil, err
	}
	c.peer = theirs.Identity
	c.r.max = opts.MaxPayload + Overhead // the peer has proved itself
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
	c := newConn(nc, opts, fmt.Sprintf("unidentified peer (%s)", addr))
	ctx, cancel := c.handshakeCtx(ctx)
	defer cancel()
	selfSide := fmt.Sprintf("this %s", roleName(opts.Self.Stage))
	if opts.Self.Stage == 0 {
		selfSide = "this rank"
	}
	stranger := fmt.Sprintf("the peer at %s", addr)

	f, err := c.recv(ctx, time.Time{}, "no hello")
	if err != nil {
		err = handshakeError(stranger, err)
		c.refuse(codeOf(err), err)
		return nil, err
	}
	var hello Hello
	if err := f.Decode(&hello); err != nil {
		err = handshakeError(stranger, err)
		c.refuse(codeOf(err), err)
		return nil, err
	}
	ack := HelloAck{Secret: opts.Secret != ""}
	rand.Read(ack.Nonce[:])
	// The ack goes out even when the secrets disagree: the dialer then refuses with a message
	// phrased from its own side.
	if err := c.Send(ctx, 0, 0, &ack); err != nil {
		c.nc.Close()
		return nil, err
	}
	if hello.Secret != ack.Secret {
		c.nc.Close()
		if hello.Secret {
			return nil, fmt.Errorf("transport: %s holds a shared secret but %s has none: %s: %w", stranger, selfSide, secretFix, ErrAuth)
		}
		return nil, fmt.Errorf("transport: %s has no shared secret but %s requires one: %s: %w", stranger, selfSide, secretFix, ErrAuth)
	}
	hb, _ := hello.AppendBinary(nil)
	ab, _ := ack.AppendBinary(nil)
	d2l, l2d, err := sessionKeys(opts.Secret, hb, ab)
	if err != nil {
		c.nc.Close()
		return nil, err
	}
	if !opts.plaintext {
		c.startSealing(l2d, d2l)
	}

	f, err = c.recv(ctx, time.Time{}, "no handshake answer")
	if err != nil {
		err = handshakeError(stranger, err)
		if errors.Is(err, ErrAuth) {
			// Sealed under our key, the dialer cannot open it either, and so learns it failed.
			c.refuse(CodeAuth, err)
		} else {
			c.nc.Close()
		}
		return nil, err
	}
	var theirs Auth
	if err := f.Decode(&theirs); err != nil {
		err = handshakeError(stranger, err)
		c.refuse(CodeBadFrame, err)
		return nil, err
	}
	peerSide := fmt.Sprintf("%s at %s", roleName(theirs.Stage), addr)
	if theirs.Identity.Stage != opts.Self.Stage {
		selfSide = "this rank"
	}
	c.name = fmt.Sprintf("%s (%s)", roleName(theirs.Stage), addr)
	c.peer = theirs.Identity
	if opts.Admit != nil {
		if err := opts.Admit(theirs.Identity); err != nil {
			c.refuse(codeOf(err), err)
			return nil, err
		}
	}
	// The answer goes out even when the identities disagree, for the same reason as the ack.
	if err := c.Send(ctx, 0, 1, &Auth{Stage: opts.Self.Stage, Identity: opts.Self}); err != nil {
		c.nc.Close()
		return nil, err
	}
	if _, err := compare(theirs.Identity, opts.Self, peerSide, selfSide); err != nil {
		c.nc.Close()
		return nil, err
	}
	c.r.max = opts.MaxPayload + Overhead // the peer has proved itself
	return c, nil
}
