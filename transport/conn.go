package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the zero Options.
const (
	DefaultTimeout          = 5 * time.Second
	DefaultPrefillTimeout   = 60 * time.Second
	DefaultLoadTimeout      = 10 * time.Minute
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 30 * time.Second
)

// SecretEnv is the environment variable the command line reads the shared secret from (the
// other way is a file, --secret-file). Secrets never go on the command line, where ps shows them.
const SecretEnv = "HIPPO_SECRET"

// Options configures a connection. The zero value works: no identity checks beyond equality
// of the (empty) identities, no secret, default timeouts, no link shaping.
type Options struct {
	// Self is this rank's identity.
	Self Identity
	// Peer is the identity a dialer expects the listener to have. Listeners ignore it.
	Peer Identity
	// Secret, when set, must be the same on both sides: the session keys that seal every
	// frame after the two clear hello frames are derived from it and both sides' fresh nonces,
	// so only a peer that knows it can open (or forge) a frame; it never crosses the wire.
	// Empty means none: frames are still sealed, with keys anyone can derive (see seal.go).
	Secret string

	// Timeout bounds how long Call waits for the reply to a decode step, and how long a
	// Send may stall; default DefaultTimeout.
	Timeout time.Duration
	// PrefillTimeout replaces Timeout when Call sends a Forward of more than one token;
	// default DefaultPrefillTimeout.
	PrefillTimeout time.Duration
	// LoadTimeout replaces Timeout when Call sends an Assign, whose answer comes once every
	// later stage has loaded its layers; default DefaultLoadTimeout.
	LoadTimeout time.Duration
	// HandshakeTimeout bounds the handshake; default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// IdleTimeout, when > 0, bounds how long Recv waits for the next frame: a stage closes a
	// session whose driver went quiet. Zero waits as long as the context allows.
	IdleTimeout time.Duration
	// DialTimeout bounds Dial's retries when its context has no deadline; default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxPayload is the largest payload accepted or sent; default DefaultMaxPayload.
	MaxPayload int
	// MaxPending bounds a Listener's concurrent handshakes; default DefaultMaxPending.
	MaxPending int
	// Admit, when set, is asked by the listener's side of the handshake once the peer has
	// authenticated: a non-nil error refuses the connection with it (a rank that already
	// serves a driver answers ErrBusy this way). It may be called from several goroutines.
	Admit func(peer Identity) error

	// Profile shapes what this side sends (see Shape); the zero Profile sends as is. Give
	// both sides the same profile to delay both directions.
	Profile Profile
	// Seed seeds the shaper's jitter; a dialer and a listener with the same seed still
	// draw different sequences.
	Seed uint64

	// version overrides the wire version, for tests of the refusal.
	version uint8
	// plaintext skips sealing after the handshake, only for the benchmark that measures what
	// sealing costs; both sides must set it.
	plaintext bool
	// sealTime, when set (by the same benchmark), adds up the time this side spends sealing and
	// opening frames.
	sealTime *atomic.Int64
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.PrefillTimeout <= 0 {
		o.PrefillTimeout = DefaultPrefillTimeout
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.version == 0 {
		o.version = Version
	}
	return o
}

// Conn is a connection to one peer stage, after a successful handshake.
//
// Concurrency: Send may be called from any goroutine, also while another goroutine is in Recv,
// Call or Ping. Recv, Call and Ping read from the connection and must not overlap each other.
type Conn struct {
	nc     net.Conn
	r      *Reader
	opts   Options
	peer   Identity
	name   string // "stage 1 (127.0.0.1:7001)", for errors
	pongTo uint64 // token of the Ping in flight

	// out and in seal and open payloads once the handshake derived the session keys; nil
	// before. out is used under wmu, in by the one reader.
	out, in *sealer

	wmu  sync.Mutex
	wbuf []byte

	// Cancellation of the read and write sides: see armed.
	readArm, writeArm armed

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

func newConn(nc net.Conn, opts Options, name string) *Conn {
	c := &Conn{
		nc:     nc,
		r:      &Reader{r: bufio.NewReaderSize(nc, 64<<10), max: maxHandshakePayload, version: opts.version},
		opts:   opts,
		name:   name,
		closed: make(chan struct{}),
	}
	c.readArm.set = nc.SetReadDeadline
	c.writeArm.set = nc.SetWriteDeadline
	return c
}

// Peer returns the identity the peer presented in the handshake (the dialer's expectation,
// seen from the listener, which already checked it against its own).
func (c *Conn) Peer() Identity { return c.peer }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// String names the peer, e.g. "stage 1 (127.0.0.1:7001)".
func (c *Conn) String() string { return c.name }

// roleName names a stage in messages: stage 0 is the driver.
func roleName(stage int) string {
	if stage == 0 {
		return "driver"
	}
	return fmt.Sprintf("stage %d", stage)
}

// aLongTimeAgo is a deadline in the past, to wake a blocked read or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// deadline returns the earlier of now+d and ctx's deadline; d <= 0 means ctx's deadline alone
// (zero time: none).
func deadline(ctx context.Context, d time.Duration) time.Time {
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	if cd, ok := ctx.Deadline(); ok && (t.IsZero() || cd.Before(t)) {
		t = cd
	}
	return t
}

// watch makes ctx's cancellation interrupt a blocked read or write by moving its deadline into
// the past. It costs nothing for contexts that cannot be cancelled.
func watch(ctx context.Context, set func(time.Time) error) (stop func() bool) {
	if ctx.Done() == nil {
		return func() bool { return true }
	}
	return context.AfterFunc(ctx, func() { set(aLongTimeAgo) })
}

// armed makes a context's cancellation interrupt one side (read or write) of the connection,
// by moving that side's deadline into the past. The registration is kept while consecutive
// calls use the same context, as a stage's serve loop does, so the steady state allocates
// nothing. Each side is used by one goroutine at a time (reads never overlap; writes hold wmu).
type armed struct {
	set  func(time.Time) error // the side's SetDeadline, bound once
	mu   sync.Mutex            // uncontended except against Close
	done <-chan struct{}       // the armed context's Done channel
	stop func() bool
}

// arm registers ctx for the side whose deadline set moves. Callers set the real deadline
// after arming and then check ctx.Err(), so a cancellation can never be overwritten unseen.
func (a *armed) arm(ctx context.Context) {
	done := ctx.Done()
	a.mu.Lock()
	defer a.mu.Unlock()
	if done == a.done {
		return
	}
	a.disarmLocked()
	if done == nil {
		return // cannot be cancelled
	}
	a.done = done
	a.stop = context.AfterFunc(ctx, func() {
		// The callback runs in its own goroutine, maybe after a later call re-armed the side
		// for another context: it only acts while its context is still the armed one.
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.done == done {
			a.set(aLongTimeAgo)
		}
	})
}

func (a *armed) disarm() {
	a.mu.Lock()
	a.disarmLocked()
	a.mu.Unlock()
}

func (a *armed) disarmLocked() {
	if a.stop != nil {
		a.stop()
		a.done, a.stop = nil, nil
	}
}

// Send writes one frame carrying m. It waits at most Options.Timeout (or until ctx ends) for
// the connection to take the bytes.
func (c *Conn) Send(ctx context.Context, session, seq uint64, m Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(ctx, session, seq, m)
}

func (c *Conn) sendLocked(ctx context.Context, session, seq uint64, m Message) error {
	b, n, err := appendMessage(c.wbuf[:0], c.opts.version, session, seq, m)
	c.wbuf = b[:0]
	if err != nil {
		return fmt.Errorf("transport: send %s to %s: %w", m.Type(), c.name, err)
	}
	if n > c.opts.MaxPayload {
		return fmt.Errorf("transport: send %s to %s: payload of %d bytes exceeds the %d-byte limit: send smaller chunks or raise MaxPayload: %w",
			m.Type(), c.name, n, c.opts.MaxPayload, ErrTooLarge)
	}
	if c.out != nil {
		b = c.out.seal(b, n)
		c.wbuf = b[:0]
	}
	start := time.Now()
	dl := deadline(ctx, c.opts.Timeout)
	c.writeArm.arm(ctx)
	c.nc.SetWriteDeadline(dl)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transport: send %s to %s: %w", m.Type(), c.name, err)
	}
	if _, err := c.nc.Write(b); err != nil {
		return c.ioError(ctx, "send stalled", start, dl, err)
	}
	return nil
}

// Recv reads the next frame, waiting as long as ctx allows: a stage waits here for its next
// request, however long the driver idles. Ping frames are answered and skipped. An Error frame
// is returned as an error that wraps the peer's *Error. The payload is valid until the next
// Recv, Call or Ping.
func (c *Conn) Recv(ctx context.Context) (Frame, error) {
	var dl time.Time
	if c.opts.IdleTimeout > 0 {
		dl = time.Now().Add(c.opts.IdleTimeout)
	}
	return c.recv(ctx, dl, "no frame")
}

// startSealing switches both directions to the session keys.
func (c *Conn) startSealing(out, in *sealer) {
	out.spent, in.spent = c.opts.sealTime, c.opts.sealTime
	c.wmu.Lock()
	c.out = out
	c.wmu.Unlock()
	c.in = in
}

func (c *Conn) recv(ctx context.Context, dl time.Time, what string) (Frame, error) {
	start := time.Now()
	if cd, ok := ctx.Deadline(); ok && (dl.IsZero() || cd.Before(dl)) {
		dl = cd
	}
	c.readArm.arm(ctx)
	c.nc.SetReadDeadline(dl)
	if err := ctx.Err(); err != nil {
		return Frame{}, &peerError{peer: c.name, err: err}
	}
	for {
		f, err := c.r.ReadFrame()
		if err != nil {
			return Frame{}, c.ioError(ctx, what, start, dl, err)
		}
		if c.in != nil {
			p, n, ok := c.in.open(c.r.hdr[:], f.Payload)
			if !ok {
				return Frame{}, fmt.Errorf("transport: %s: %s frame %d failed authentication: it was altered, truncated, replayed, reordered or forged, or the peer holds another secret: %w",
					c.name, f.Type, n, ErrAuth)
			}
			f.Payload = p
		}
		switch f.Type {
		case TypePing:
			var p Ping
			if err := p.UnmarshalBinary(f.Payload); err != nil {
				return Frame{}, &peerError{peer: c.name, err: err}
			}
			if err := c.Send(ctx, f.Session, f.Seq, &Pong{Token: p.Token}); err != nil {
				return Frame{}, err
			}
			continue
		case TypeError:
			var e Error
			if err := e.UnmarshalBinary(f.Payload); err != nil {
				return Frame{}, &peerError{peer: c.name, err: err}
			}
			return f, &peerError{peer: c.name + " reports", err: &e}
		}
		return f, nil
	}
}

// Call sends req and waits for the frame that answers it (same session and seq) and decodes it
// into reply. It waits at most Options.Timeout, Options.PrefillTimeout when req is a Forward of
// more than one token or a Survey, or Options.LoadTimeout when it is an Assign, and never past
// ctx's deadline. On timeout the error wraps
// ErrTimeout and names the peer; if the peer died it wraps ErrPeerGone.
//
// Sessions and seqs are expected to grow: answers to earlier calls (a lower session, or the
// same session and a lower seq) that arrive late, after their call timed out, are skipped, so
// the connection stays usable after a timeout.
func (c *Conn) Call(ctx context.Context, session, seq uint64, req, reply Message) error {
	wait := c.opts.Timeout
	switch m := req.(type) {
	case *Forward:
		if m.Tokens > 1 {
			wait = c.opts.PrefillTimeout
		}
	case *Survey:
		wait = c.opts.PrefillTimeout // every stage first reaches the next one
	case *Assign:
		wait = c.opts.LoadTimeout
	}
	dl := deadline(ctx, wait)
	if err := c.Send(ctx, session, seq, req); err != nil {
		return err
	}
	for {
		f, err := c.recv(ctx, dl, "no reply")
		if err != nil {
			return err
		}
		if f.Type == TypePong {
			continue // the answer to an abandoned Ping
		}
		if f.Session < session || f.Session == session && f.Seq < seq {
			continue // a late answer to a call that timed out
		}
		if f.Seq != seq || f.Session != session {
			return fmt.Errorf("transport: %s answered session %d seq %d, want session %d seq %d: %w",
				c.name, f.Session, f.Seq, session, seq, ErrBadFrame)
		}
		if err := f.Decode(reply); err != nil {
			return &peerError{peer: c.name, err: err}
		}
		return nil
	}
}

// Ping sends a Ping and waits (at most Options.Timeout) for its Pong, returning the round trip.
// Frames other than the Pong that arrive meanwhile are an error: ping an idle connection.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	c.pongTo++
	tok := c.pongTo
	start := time.Now()
	dl := deadline(ctx, c.opts.Timeout)
	if err := c.Send(ctx, 0, 0, &Ping{Token: tok}); err != nil {
		return 0, err
	}
	for {
		f, err := c.recv(ctx, dl, "no pong")
		if err != nil {
			return 0, err
		}
		var p Pong
		if err := f.Decode(&p); err != nil {
			return 0, &peerError{peer: c.name, err: err}
		}
		if p.Token == tok {
			return time.Since(start), nil
		}
	}
}

// Close sends a Bye (waiting at most 100 ms for it to leave; skipped while another goroutine
// is stuck sending) and closes the connection. It is safe to call more than once and
// concurrently with other methods, which then fail with net.ErrClosed.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.wmu.TryLock() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			c.sendLocked(ctx, 0, 0, &Bye{})
			cancel()
			c.wmu.Unlock()
		}
		close(c.closed)
		c.closeErr = c.nc.Close()
		c.writeArm.disarm()
		c.readArm.disarm()
	})
	return c.closeErr
}

// peerError prefixes an error with the peer's name without repeating the package prefix.
type peerError struct {
	peer string
	err  error
}

// Error returns "transport: <peer>: <cause>", with the cause's own prefix dropped.
func (e *peerError) Error() string {
	return "transport: " + e.peer + ": " + strings.TrimPrefix(e.err.Error(), "transport: ")
}

// Unwrap returns the cause.
func (e *peerError) Unwrap() error { return e.err }

// ioError turns a read or write failure into an error that names the peer and says what
// happened: a timeout (ErrTimeout), a broken connection (ErrPeerGone), our own Close, a
// cancelled context, or a protocol violation.
func (c *Conn) ioError(ctx context.Context, what string, start, dl time.Time, err error) error {
	select {
	case <-c.closed:
		return fmt.Errorf("transport: connection to %s is closed: %w", c.name, net.ErrClosed)
	default:
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		if cerr := ctx.Err(); errors.Is(cerr, context.Canceled) {
			return fmt.Errorf("transport: %s: %s: %w", c.name, what, cerr)
		}
		waited := dl.Sub(start).Round(time.Millisecond)
		if dl.IsZero() || waited <= 0 {
			waited = time.Since(start).Round(time.Millisecond)
		}
		return fmt.Errorf("transport: %s: %s within %v: %w", c.name, what, waited, ErrTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("transport: %s: connection lost (the peer closed it or died): %w: %w", c.name, ErrPeerGone, err)
	}
	return &peerError{peer: c.name, err: err}
}

// Dial connects to the stage listening at addr and runs the handshake. While nothing listens
// there yet it retries with backoff (20 ms doubling to 1 s), until ctx's deadline or, without
// one, Options.DialTimeout: ranks may start in any order. A refused handshake is not retried.
func Dial(ctx context.Context, addr string, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.DialTimeout)
		defer cancel()
	}
	peer := fmt.Sprintf("%s at %s", roleName(opts.Peer.Stage), addr)
	var d net.Dialer
	backoff := 20 * time.Millisecond
	start := time.Now()
	var last error // the last failure that was not our own deadline: what the user must fix
	giveUp := func(attempts int, err error) error {
		if last != nil {
			err = last
		}
		return fmt.Errorf("transport: dial %s: nothing answered within %v (%d attempts): start the rank or check the address: %w",
			peer, time.Since(start).Round(time.Millisecond), attempts, err)
	}
	for attempt := 1; ; attempt++ {
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return Client(ctx, nc, opts)
		}
		if ctx.Err() != nil {
			return nil, giveUp(attempt, err)
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, giveUp(attempt, err)
		}
		backoff = min(2*backoff, time.Second)
	}
}

// DefaultMaxPending is how many handshakes a Listener runs at once unless told otherwise.
const DefaultMaxPending = 32

// Listener accepts connections from upstream ranks. It accepts in the background and runs each
// handshake in its own goroutine, bounded by Options.HandshakeTimeout, so a peer that connects
// and stalls (or trickles bytes) never blocks the others. At most Options.MaxPending handshakes
// run at once; a connection beyond that closes the oldest pending one, so a flood of
// connections cannot lock a legitimate driver out: a real handshake takes milliseconds, while
// the flood's sockets wait to be evicted.
type Listener struct {
	ln   net.Listener
	opts Options

	results chan accepted
	ctx     context.Context // ends with Close, abandoning the handshakes in progress
	cancel  context.CancelFunc
	done    <-chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	pending []net.Conn // oldest first
	evicted map[net.Conn]bool
	closed  bool
}

type accepted struct {
	c   *Conn
	err error
}

// Listen listens on addr (host:port; port 0 picks one, see Addr) and starts accepting.
func Listen(ctx context.Context, addr string, opts Options) (*Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen on %s: %w", addr, err)
	}
	l := &Listener{ln: ln, opts: opts.withDefaults(), results: make(chan accepted)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.done = l.ctx.Done()
	l.wg.Add(1)
	go l.loop()
	return l, nil
}

// Addr returns the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops listening and abandons the handshakes in progress. Connections already returned
// by Accept stay open.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.cancel()
	for _, nc := range l.pending {
		nc.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *Listener) loop() {
	defer l.wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of file descriptors, say: do not spin
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			nc.Close()
			return
		}
		if len(l.pending) >= l.opts.MaxPending {
			l.pending[0].Close() // its handshake fails at once
			if l.evicted == nil {
				l.evicted = map[net.Conn]bool{}
			}
			l.evicted[l.pending[0]] = true
			l.pending = l.pending[1:]
		}
		l.pending = append(l.pending, nc)
		l.mu.Unlock()
		l.wg.Add(1)
		go l.handshake(nc)
	}
}

func (l *Listener) handshake(nc net.Conn) {
	defer l.wg.Done()
	addr := nc.RemoteAddr().String()
	c, err := Server(l.ctx, nc, l.opts)
	l.mu.Lock()
	for i, p := range l.pending {
		if p == nc {
			l.pending = append(l.pending[:i], l.pending[i+1:]...)
			break
		}
	}
	if l.evicted[nc] {
		delete(l.evicted, nc)
		// Not net.ErrClosed: that would read as the listener itself being closed.
		err = fmt.Errorf("transport: the peer at %s was dropped before it finished its handshake: %d other connections were handshaking (a flood?): %w", addr, l.opts.MaxPending, ErrPeerGone)
	}
	l.mu.Unlock()
	if err != nil && errors.Is(err, net.ErrClosed) {
		err = fmt.Errorf("transport: handshake with the peer at %s: connection closed: %v", addr, err)
	}
	select {
	case l.results <- accepted{c, err}:
	case <-l.done:
		if c != nil {
			c.Close()
		}
	}
}

// Accept waits (until ctx ends or the listener is closed) for the next handshake to finish and
// returns its connection, or its refusal: a refused handshake has already closed that
// connection; call Accept again to keep serving. Only a closed listener's error wraps
// net.ErrClosed. Accept may be called from one goroutine at a
// time or several.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	select {
	case r := <-l.results:
		return r.c, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("transport: accept on %s: %w", l.ln.Addr(), ctx.Err())
	case <-l.done:
		return nil, fmt.Errorf("transport: accept on %s: %w", l.ln.Addr(), net.ErrClosed)
	}
}

// tune turns Nagle's algorithm off (a decode step is one small frame each way, and must not wait
// for an ACK) and applies the link profile.
func tune(nc net.Conn, opts Options, seed uint64) net.Conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	return Shape(nc, opts.Profile, seed)
}
