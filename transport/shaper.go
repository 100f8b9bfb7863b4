package transport

import (
	"math"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
)

// Shape wraps c so that everything written to it reaches the peer as if it crossed a link
// with profile p: each Write is one message that is serialized at p.Bandwidth behind the
// messages before it (back-to-back messages queue, as on a real link), then delayed by
// p.Latency plus a jitter drawn from a generator seeded with seed, and delivered in order (a
// message never overtakes the one before it, as on a TCP stream). Reads are not touched: shape
// both ends to delay both directions.
//
// Write copies the data and returns once the message is queued; it blocks only while more
// than a socket buffer's worth (4 MiB) is queued, honouring SetWriteDeadline. An error from
// the underlying connection is returned by the next Write. Close delivers what is queued (for
// at most one second beyond its scheduled time), then closes c; it leaves no goroutine behind.
// Writes may come from several goroutines; each Write stays contiguous.
//
// The delivery goroutine waits with a timer and then spins for the last 1.5 ms, because Go's
// timers on Linux wake up to a millisecond late: precise sub-millisecond delays cost some CPU.
//
// A profile that shapes nothing (the zero Profile, "loopback") returns c itself.
func Shape(c net.Conn, p Profile, seed uint64) net.Conn {
	if !p.shapes() {
		return c
	}
	s := &shaped{
		Conn:    c,
		p:       p,
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		kick:    make(chan struct{}, 1),
		changed: make(chan struct{}),
		closed:  make(chan struct{}),
		abort:   make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.pump()
	return s
}

// shapedLimit is how many bytes may wait in the delay line before Write blocks, like a socket
// send buffer.
const shapedLimit = 4 << 20

// spinWindow is how long before a delivery the pump stops sleeping and spins.
const spinWindow = 1500 * time.Microsecond

// drainGrace is how long Close waits past the last scheduled delivery before aborting.
const drainGrace = time.Second

type chunk struct {
	buf *[]byte
	at  time.Time // delivery time
}

type shaped struct {
	net.Conn
	p Profile

	mu       sync.Mutex
	rng      *rand.Rand
	queue    []chunk // FIFO, delivery times non-decreasing
	queued   int     // bytes queued or being written
	linkFree time.Time
	last     time.Time // delivery time of the newest chunk
	deadline time.Time // write deadline
	err      error     // sticky error from the underlying connection
	closing  bool
	waiters  int
	changed  chan struct{} // closed and replaced when waiters should look again

	kick   chan struct{} // wakes the pump
	closed chan struct{} // closed by Close
	abort  chan struct{} // closed when Close gives up draining
	done   chan struct{} // closed when the pump exits

	closeOnce sync.Once
	closeErr  error
}

var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// broadcastLocked wakes every waiting writer. Callers hold s.mu.
func (s *shaped) broadcastLocked() {
	if s.waiters > 0 {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// jitterLocked draws one jitter. Callers hold s.mu (the generator is not safe for concurrent
// use).
func (s *shaped) jitterLocked() time.Duration {
	if s.p.Jitter <= 0 {
		return 0
	}
	var x float64
	if s.p.Dist == Exponential {
		x = s.rng.ExpFloat64()
	} else {
		x = math.Abs(s.rng.NormFloat64())
	}
	return time.Duration(min(x, jitterCap) * float64(s.p.Jitter))
}

// Write queues b as one message on the delay line; see Shape.
func (s *shaped) Write(b []byte) (int, error) {
	s.mu.Lock()
	for {
		if s.closing {
			s.mu.Unlock()
			return 0, net.ErrClosed
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return 0, err
		}
		// A message larger than the limit is admitted alone, like a large send that the
		// kernel takes piecewise.
		if s.queued == 0 || s.queued+len(b) <= shapedLimit {
			break
		}
		if !s.deadline.IsZero() && !time.Now().Before(s.deadline) {
			s.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if err := s.waitLocked(); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	if len(b) == 0 {
		s.mu.Unlock()
		return 0, nil
	}
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], b...)

	now := time.Now()
	start := now
	if s.linkFree.After(start) {
		start = s.linkFree
	}
	s.linkFree = start.Add(s.p.Serialization(len(b)))
	at := s.linkFree.Add(s.p.Latency + s.jitterLocked())
	if at.Before(s.last) {
		at = s.last // TCP delivers in order: a message never overtakes the one before it
	}
	s.last = at
	s.queue = append(s.queue, chunk{buf: bp, at: at})
	s.queued += len(b)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return len(b), nil
}

// waitLocked blocks until the state changes (room freed, deadline moved, error, close) or the
// write deadline passes. It drops s.mu while waiting.
func (s *shaped) waitLocked() error {
	ch := s.changed
	dl := s.deadline
	s.waiters++
	s.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		timeout = t.C
	}
	var err error
	select {
	case <-ch:
	case <-timeout:
		err = os.ErrDeadlineExceeded
	case <-s.closed:
		err = net.ErrClosed
	}
	s.mu.Lock()
	s.waiters--
	return err
}

// SetWriteDeadline bounds how long Write may block on a full delay line. Messages already
// queued are delivered regardless.
func (s *shaped) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	s.broadcastLocked()
	s.mu.Unlock()
	return nil
}

// SetDeadline sets the write deadline above and the underlying read deadline.
func (s *shaped) SetDeadline(t time.Time) error {
	if err := s.SetWriteDeadline(t); err != nil {
		return err
	}
	return s.Conn.SetReadDeadline(t)
}

// pump delivers queued chunks at their times, in order. It exits when the queue is empty after
// Close, on abort, or on a write error.
func (s *shaped) pump() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		s.mu.Lock()
		for len(s.queue) == 0 {
			if s.closing {
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			select {
			case <-s.kick:
			case <-s.abort:
				return
			}
			s.mu.Lock()
		}
		c := s.queue[0]
		// Shift rather than reslice, so the backing array is reused and queueing a
		// message allocates nothing in the steady state (the queue is short).
		n := copy(s.queue, s.queue[1:])
		s.queue[n] = chunk{}
		s.queue = s.queue[:n]
		s.mu.Unlock()

		if !sleepUntil(c.at, timer, s.abort) {
			return
		}
		size := len(*c.buf)
		_, err := s.Conn.Write(*c.buf)
		bufPool.Put(c.buf)

		s.mu.Lock()
		s.queued -= size
		if err != nil && s.err == nil {
			s.err = err
		}
		s.broadcastLocked()
		failed := s.err != nil
		s.mu.Unlock()
		if failed {
			return
		}
	}
}

// sleepUntil waits until t: with the timer while far away, then spinning, since timers may
// wake a millisecond late. It returns false if abort closed first.
func sleepUntil(t time.Time, timer *time.Timer, abort <-chan struct{}) bool {
	for {
		d := time.Until(t)
		if d <= 0 {
			return true
		}
		if d > spinWindow {
			timer.Reset(d - spinWindow)
			select {
			case <-timer.C:
			case <-abort:
				timer.Stop()
				return false
			}
			continue
		}
		select {
		case <-abort:
			return false
		default:
		}
		runtime.Gosched()
	}
}

// Close stops accepting writes, delivers what is queued (aborting one second past the last
// scheduled delivery, e.g. towards a peer that stopped reading), closes the underlying
// connection and waits for the delivery goroutine to exit.
func (s *shaped) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		last := s.last
		s.broadcastLocked()
		s.mu.Unlock()
		close(s.closed)
		select {
		case s.kick <- struct{}{}:
		default:
		}
		grace := time.NewTimer(max(time.Until(last), 0) + drainGrace)
		select {
		case <-s.done:
		case <-grace.C:
			close(s.abort)
		}
		grace.Stop()
		s.closeErr = s.Conn.Close() // unblocks a pump stuck writing to a peer that stopped reading
		select {
		case <-s.abort:
		default:
			close(s.abort)
		}
		<-s.done
	})
	return s.closeErr
}
