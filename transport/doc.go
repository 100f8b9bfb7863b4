// Package transport carries pipeline traffic between stages: length-prefixed typed frames, a
// handshake that refuses mismatched ranks, connections with per-frame deadlines that name the
// peer when it stalls or dies, and link profiles that emulate Thunderbolt, Wi-Fi or Ethernet in
// user space (these kernels have no netem).
//
// # Wire format
//
// Every frame is a fixed 28-byte header followed by the payload. All integers are little-endian,
// the byte order of every machine Hippo runs on, so a tensor's bytes go on the wire exactly as
// they sit in the MLX buffer (bf16 stays two bytes per element).
//
//	offset size field
//	0      4    magic "HIPO"
//	4      1    wire version (Version)
//	5      1    frame type (Type)
//	6      2    flags (none defined in version 1; readers reject set bits)
//	8      8    session id (one per request)
//	16     8    sequence number (a reply echoes its request's)
//	24     4    payload length (at most the reader's limit, DefaultMaxPayload by default)
//
// After the two clear handshake frames (Hello and HelloAck, which carry only a nonce and whether
// the sender holds a secret), every payload is sealed with AES-256-GCM under per-connection,
// per-direction keys derived with HKDF from the shared secret and both nonces; the header is the
// additional data and the nonce counts frames, so altered, truncated, replayed, reordered or
// forged frames fail to open (see seal.go, and handshake.go for the mutual authentication).
// A sealed payload is the message followed by a 16-byte tag (Overhead).
//
// The payload of each type is described on its message struct (Hello, HelloAck, Auth, Reset,
// Forward, Reply, Error, Bye, Ping, Pong, Survey, Memory, Assign). Decoders reject truncated input, trailing bytes and
// out-of-range values, and never allocate more than the bytes actually received.
//
// # One pipeline step
//
// The driver (stage 0) calls Conn.Call with a Forward holding its hidden state; stage 1 receives
// it with Conn.Recv, runs its layers, forwards to the next stage the same way (or samples, on
// the last stage) and answers with Conn.Send of a Reply that carries the token and, hop by hop,
// every stage's own forward time. The driver subtracts the stage times from the round trip to
// get the network time per hop.
//
// Before the first step, the driver sends an Assign with every stage's layer range; a driver
// given no split first sends a Survey, whose Memory answer lists what memory each stage offers
// (see assign.go).
package transport

import "errors"

// Sentinel errors. Every error this package returns that belongs to one of these classes wraps
// the sentinel, so callers test with errors.Is; the message itself names the peer and the fix.
var (
	// ErrBadFrame means the bytes read are not a valid frame or payload: bad magic, unknown
	// type, reserved flags set, truncated or trailing data, or an out-of-range field.
	ErrBadFrame = errors.New("bad frame")
	// ErrTooLarge means a frame's payload is larger than the configured limit.
	ErrTooLarge = errors.New("frame too large")
	// ErrVersion means the two sides speak different wire versions.
	ErrVersion = errors.New("wire version mismatch")
	// ErrModelMismatch means the two sides loaded different models (identity hash, layer
	// count or dtype differ).
	ErrModelMismatch = errors.New("model mismatch")
	// ErrAuth means the shared-secret check failed or only one side has a secret.
	ErrAuth = errors.New("authentication failed")
	// ErrRange means a stage runs a different stage index or layer range than planned, or a
	// layer range is invalid.
	ErrRange = errors.New("layer range mismatch")
	// ErrTimeout means the peer did not answer (or did not accept data) before the deadline.
	ErrTimeout = errors.New("peer timed out")
	// ErrPeerGone means the connection broke: the peer closed it, crashed or was unplugged.
	ErrPeerGone = errors.New("peer connection lost")
	// ErrBusy means the rank already serves another driver.
	ErrBusy = errors.New("rank busy")
	// ErrLimit means a request exceeds a rank's context cap or memory guard.
	ErrLimit = errors.New("rank limit exceeded")
)
