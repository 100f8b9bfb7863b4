package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
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
	// TransportJACCL is MLX's JACCL backend, RDMA over Thunderbolt 5 between Macs (macOS 26.2+,
	// libjaccl.dylib from the mlx-metal wheel), through the same shim path and protocol as
	// TransportRing. Untested on hardware: no one has run it on two Macs yet.
	TransportJACCL = "mlx-jaccl"
)

// overMLX says whether transport tr runs over one of MLX's distributed backends (the ring
// protocol of ring.go) rather than the project's TCP framing.
func overMLX(tr string) bool { return tr == TransportRing || tr == TransportJACCL }

// OverMLX says whether transport tr runs over one of MLX's distributed backends rather than
// the project's TCP framing: link profiles, hosts files and local launch do not apply to it.
func OverMLX(tr string) bool { return overMLX(tr) }

// startJACCL joins MLX's JACCL group as rank stage. MLX reads MLX_RANK, MLX_IBV_DEVICES (the
// RDMA device matrix) and MLX_JACCL_COORDINATOR (rank 0's ip:port) from the environment.
func startJACCL(stage int) (*ringJoin, error) {
	if r := os.Getenv("MLX_RANK"); r != strconv.Itoa(stage) {
		return nil, fmt.Errorf("mlx-jaccl: MLX_RANK is %q but this process serves stage %d: set MLX_RANK=%d", r, stage, stage)
	}
	for _, env := range []string{"MLX_IBV_DEVICES", "MLX_JACCL_COORDINATOR"} {
		if os.Getenv(env) == "" {
			return nil, fmt.Errorf("mlx-jaccl: %s is not set: JACCL needs MLX_IBV_DEVICES (the JSON matrix of RDMA devices between ranks) and MLX_JACCL_COORDINATOR (rank 0's ip:port)", env)
		}
	}
	j := &ringJoin{stage: stage, done: make(chan ringJoined, 1)}
	go func() {
		g, err := mlx.NewGroup(mlx.GroupOptions{Backend: "jaccl"})
		j.done <- ringJoined{g, err}
	}()
	return j, nil
}

// ParseTransport checks a transport name; "" means TransportTCP. TransportJACCL is refused
// outside macOS, where MLX has no JACCL backend.
func ParseTransport(s string) (string, error) {
	switch s {
	case "", TransportTCP:
		return TransportTCP, nil
	case TransportRing:
		return TransportRing, nil
	case TransportJACCL:
		if runtime.GOOS != "darwin" {
			return "", fmt.Errorf("transport %s: MLX's JACCL backend (RDMA over Thunderbolt 5) exists only on macOS 26.2+ with the mlx-metal wheel's libjaccl.dylib; this is %s: use %s or %s",
				s, runtime.GOOS, TransportTCP, TransportRing)
		}
		return TransportJACCL, nil
	}
	return "", fmt.Errorf("transport %q: use %s, %s or %s (macOS only)", s, TransportTCP, TransportRing, TransportJACCL)
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
// background from the start, because every rank's join blocks until all ranks have joined. Over
// TCP, ring is nil and the driver dials stage 1 itself (it needs the connection before stage 0
// loads, to plan the split).
type linkStart struct {
	plan Plan
	ring *ringJoin
}

// startLink begins connecting the driver: nothing for TCP, joining MLX's ring for mlx-ring (addr
// is then the hostfile; "" uses $MLX_HOSTFILE) and JACCL.
func startLink(plan Plan, addr string) (*linkStart, error) {
	s := &linkStart{plan: plan}
	if plan.Transport == TransportJACCL {
		var err error
		s.ring, err = startRing(plan, 0, "")
		return s, err
	}
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

// open finishes joining the ring once stage 0 is loaded. Only a link over MLX (ring set) is
// opened here.
func (s *linkStart) open(ctx context.Context, first *engines.Stage) (link, error) {
	if s.ring == nil {
		return nil, errors.New("pipeline: no ring is being joined: the driver dials TCP stage 1 itself")
	}
	return openRingLink(ctx, s.plan, s.ring, first)
}

// abandon gives up a link that open will not be called for.
func (s *linkStart) abandon() {
	if s.ring != nil {
		s.ring.abandon()
	}
}
