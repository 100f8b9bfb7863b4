package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/transport"
)

// Transports a pipeline runs over (Plan.Transport).
const (
	// TransportTCP is the project's own framing over TCP (package transport): handshake,
	// per-call deadlines, link-profile shaping. It is the default.
	TransportTCP = "tcp"
	// TransportRing is MLX's distributed ring backend: stage k is MLX rank k, hidden states and
	// replies travel as MLX arrays sent between ring neighbours (see ring.go for the protocol).
	TransportRing = "mlx-ring"
)

// ParseTransport checks a transport name; "" means TransportTCP.
func ParseTransport(s string) (string, error) {
	switch s {
	case "", TransportTCP:
		return TransportTCP, nil
	case TransportRing:
		return TransportRing, nil
	}
	return "", fmt.Errorf("transport %q: use %s or %s", s, TransportTCP, TransportRing)
}

// link is the driver's connection to the rest of the pipeline: a transport.Conn to stage 1, or
// the ring. Send carries a one-way Reset; Call a Forward whose Reply comes back from the last
// stage with every remote stage's forward time. Calls must not overlap.
type link interface {
	Send(ctx context.Context, session, seq uint64, m transport.Message) error
	Call(ctx context.Context, session, seq uint64, req, reply transport.Message) error
	Close() error
}

var (
	_ link = (*transport.Conn)(nil)
	_ link = (*ringLink)(nil)
)

// linkStart is a link being set up while the driver loads stage 0: the ring is joined in the
// background from the start, because every rank's join blocks until all ranks have joined.
type linkStart struct {
	plan Plan
	addr string
	ring *ringJoin
}

// startLink begins connecting the driver: nothing yet for TCP, joining MLX's ring for mlx-ring
// (addr is then the hostfile; "" uses $MLX_HOSTFILE).
func startLink(plan Plan, addr string) (*linkStart, error) {
	s := &linkStart{plan: plan, addr: addr}
	if plan.Transport != TransportRing {
		return s, nil
	}
	hf := addr
	if hf == "" {
		hf = os.Getenv("MLX_HOSTFILE")
	}
	if err := CheckRingLoopback(hf); err != nil {
		return nil, err
	}
	var err error
	s.ring, err = startRing(plan, 0, addr)
	return s, err
}

// CheckRingLoopback refuses an MLX ring hostfile that lists any address beyond loopback. MLX's
// ring sockets carry neither authentication nor encryption, and Hippo's check that every stage
// was given the same secret is only a consistency check (a digest sent in the clear), so the
// ring is safe only where nobody else can reach its ports. Across machines, use the TCP
// transport, which authenticates and seals every frame.
func CheckRingLoopback(hostfile string) error {
	if hostfile == "" {
		return nil // startRing explains the missing hostfile
	}
	b, err := os.ReadFile(hostfile)
	if err != nil {
		return fmt.Errorf("mlx-ring: hostfile: %w", err)
	}
	var hosts [][]string
	if err := json.Unmarshal(b, &hosts); err != nil {
		return nil // startRing explains the format
	}
	for k, hs := range hosts {
		for _, h := range hs {
			host, _, err := net.SplitHostPort(h)
			ip := net.ParseIP(host)
			if err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("mlx-ring: hostfile %s puts rank %d at %s, beyond loopback: MLX's ring is neither authenticated nor encrypted, so Hippo runs it on one machine only: use --transport tcp between machines (authenticated and encrypted)", hostfile, k, h)
			}
		}
	}
	return nil
}

// open finishes the link once stage 0 is loaded.
func (s *linkStart) open(ctx context.Context, first *engines.Stage) (link, error) {
	if s.ring == nil {
		if err := CheckExposure(s.addr, s.plan.Secret); err != nil {
			return nil, err
		}
		return transport.Dial(ctx, s.addr, s.plan.options(0, true))
	}
	return openRingLink(ctx, s.plan, s.ring, first)
}

// abandon gives up a link that open will not be called for.
func (s *linkStart) abandon() {
	if s.ring != nil {
		s.ring.abandon()
	}
}
