package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Version is the wire version this build writes and accepts. Frames of any other version are
// refused with ErrVersion: ranks must run the same Hippo build.
const Version uint8 = 6 // 2: Forward.Outputs; 3: StageTiming.Network; 4: sealed frames, handshake without identities in the clear; 5: memory survey and split assignment; 6: Forward.Taps and Sample, Reply.Features

// HeaderSize is the size in bytes of the fixed frame header that precedes every payload.
const HeaderSize = 28

// DefaultMaxPayload is the largest payload a reader accepts unless told otherwise (64 MiB: a
// prefill chunk of 4096 tokens x 8192 hidden in bf16).
const DefaultMaxPayload = 64 << 20

// magic opens every frame; a reader that sees anything else is not talking to a Hippo rank.
var magic = [4]byte{'H', 'I', 'P', 'O'}

// Type says what a frame's payload holds.
type Type uint8

// Frame types. The numbering is part of the wire format: never renumber, only append.
const (
	// TypeHello opens the handshake (dialer to listener): Hello.
	TypeHello Type = 1 + iota
	// TypeHelloAck answers it with the listener's identity: HelloAck.
	TypeHelloAck
	// TypeAuth carries the dialer's shared-secret proof, and the listener's confirmation: Auth.
	TypeAuth
	// TypeReset starts a new request: the stage trims its KV cache: Reset.
	TypeReset
	// TypeForward carries a hidden-state tensor to the next stage: Forward.
	TypeForward
	// TypeReply carries sampled tokens or top-k logits and per-stage timings back: Reply.
	TypeReply
	// TypeError reports a failure to the peer: Error.
	TypeError
	// TypeBye announces an orderly close: Bye.
	TypeBye
	// TypePing asks for a Pong, to measure the link or probe liveness: Ping.
	TypePing
	// TypePong answers a Ping: Pong.
	TypePong
	// TypeSurvey asks every stage downstream for the memory it can offer: Survey.
	TypeSurvey
	// TypeMemory answers a Survey, one entry per stage: Memory.
	TypeMemory
	// TypeAssign tells every stage downstream the split it must load: Assign.
	TypeAssign
	typeEnd
)

var typeNames = [...]string{
	TypeHello:    "hello",
	TypeHelloAck: "hello-ack",
	TypeAuth:     "auth",
	TypeReset:    "reset",
	TypeForward:  "forward",
	TypeReply:    "reply",
	TypeError:    "error",
	TypeBye:      "bye",
	TypePing:     "ping",
	TypePong:     "pong",
	TypeSurvey:   "survey",
	TypeMemory:   "memory",
	TypeAssign:   "assign",
}

// String returns the type's lowercase name, or "type(N)" for an unknown value.
func (t Type) String() string {
	if t.valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

func (t Type) valid() bool { return t >= TypeHello && t < typeEnd }

// Flags is the header's flag field. Version 1 defines no flags; readers reject frames with any
// bit set so that a later version can give them meaning safely.
type Flags uint16

const knownFlags Flags = 0

// Frame is one decoded frame. Payload is the raw payload; decode it with the message type that
// matches Type (see Decode).
type Frame struct {
	Type    Type
	Flags   Flags
	Session uint64
	Seq     uint64
	Payload []byte
}

// Decode unmarshals the frame's payload into m after checking that m is the message type the
// frame carries. m copies what it keeps, so the frame's payload may be reused afterwards.
func (f Frame) Decode(m Message) error {
	if f.Type != m.Type() {
		return fmt.Errorf("transport: got a %s frame, want %s: %w", f.Type, m.Type(), ErrBadFrame)
	}
	return m.UnmarshalBinary(f.Payload)
}

// appendHeader appends a header for a payload of n bytes.
func appendHeader(b []byte, version uint8, t Type, flags Flags, session, seq uint64, n int) []byte {
	b = append(b, magic[:]...)
	b = append(b, version, byte(t))
	b = binary.LittleEndian.AppendUint16(b, uint16(flags))
	b = binary.LittleEndian.AppendUint64(b, session)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return binary.LittleEndian.AppendUint32(b, uint32(n))
}

// AppendFrame appends f, header and payload, to b: one contiguous buffer that can be written
// with a single Write.
func AppendFrame(b []byte, f Frame) ([]byte, error) {
	if err := checkOutgoing(f.Type, f.Flags, len(f.Payload)); err != nil {
		return b, err
	}
	b = appendHeader(b, Version, f.Type, f.Flags, f.Session, f.Seq, len(f.Payload))
	return append(b, f.Payload...), nil
}

// appendMessage appends a whole frame carrying m, encoding m straight into b (no intermediate
// payload buffer), and returns the payload length.
func appendMessage(b []byte, version uint8, session, seq uint64, m Message) ([]byte, int, error) {
	start := len(b)
	b = appendHeader(b, version, m.Type(), 0, session, seq, 0)
	b, err := m.AppendBinary(b)
	if err != nil {
		return b[:start], 0, err
	}
	n := len(b) - start - HeaderSize
	if err := checkOutgoing(m.Type(), 0, n); err != nil {
		return b[:start], 0, err
	}
	binary.LittleEndian.PutUint32(b[start+24:], uint32(n))
	return b, n, nil
}

func checkOutgoing(t Type, flags Flags, n int) error {
	if !t.valid() {
		return fmt.Errorf("transport: write frame: unknown type %d: %w", uint8(t), ErrBadFrame)
	}
	if flags&^knownFlags != 0 {
		return fmt.Errorf("transport: write %s frame: flags %#x are reserved: %w", t, uint16(flags), ErrBadFrame)
	}
	if uint64(n) > math.MaxUint32 {
		return fmt.Errorf("transport: write %s frame: payload of %d bytes does not fit the 32-bit length: %w", t, n, ErrTooLarge)
	}
	return nil
}

// WriteFrame writes f to w as one Write of header and payload. It copies the payload into a
// fresh buffer; Conn reuses one buffer per connection instead.
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, HeaderSize+len(f.Payload)), f)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("transport: write %s frame: %w", f.Type, err)
	}
	return nil
}

// ReadFrame reads one frame from r, refusing payloads larger than max bytes (max <= 0 means
// DefaultMaxPayload). The returned payload is freshly allocated and owned by the caller. At a
// clean end of stream (no byte of a new frame read) it returns io.EOF itself.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	fr := Reader{r: r, max: max, version: Version}
	return fr.ReadFrame()
}

// Reader reads frames from a stream, reusing one payload buffer: on the hot path a decode step
// then allocates nothing. Wrap an unbuffered connection in a bufio.Reader first.
type Reader struct {
	r       io.Reader
	max     int
	version uint8
	hdr     [HeaderSize]byte
	buf     []byte
}

// NewReader returns a Reader that refuses payloads larger than max bytes (max <= 0 means
// DefaultMaxPayload).
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, max: max, version: Version}
}

// versionError is the ErrVersion error; it keeps both numbers so the handshake can phrase the
// refusal from its own side.
type versionError struct{ got, want uint8 }

// Error phrases the mismatch for a reader that does not know who sent the frame.
func (e *versionError) Error() string {
	return fmt.Sprintf("transport: peer speaks wire version %d, this build speaks %d: run the same hippo build on every rank", e.got, e.want)
}

// Is makes errors.Is(err, ErrVersion) hold.
func (e *versionError) Is(target error) bool { return target == ErrVersion }

// allocStep bounds how far a payload buffer grows ahead of the bytes actually received, so a
// forged length costs the forger as many bytes as it costs us memory.
const allocStep = 1 << 20

// ReadFrame reads the next frame. The payload is valid until the next call to ReadFrame; copy
// it (or decode it: messages copy what they keep) to retain it. At a clean end of stream it
// returns io.EOF itself. A Reader must not be used from two goroutines at once.
func (r *Reader) ReadFrame() (Frame, error) {
	// The magic is checked before the rest of the header is awaited, so a stray client (a
	// browser, a port scanner) is refused at once instead of when its request happens to
	// reach 28 bytes.
	h := r.hdr[:]
	if _, err := io.ReadFull(r.r, h[:4]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("transport: truncated frame header: %w: %w", ErrBadFrame, err)
		}
		return Frame{}, err // io.EOF at a frame boundary, or the transport's own error
	}
	if [4]byte(h[0:4]) != magic {
		return Frame{}, fmt.Errorf("transport: bad magic %q: the peer is not a hippo rank: %w", h[0:4], ErrBadFrame)
	}
	if _, err := io.ReadFull(r.r, h[4:]); err != nil {
		return Frame{}, fmt.Errorf("transport: truncated frame header: %w: %w", ErrBadFrame, unexpected(err))
	}
	if h[4] != r.version {
		return Frame{}, &versionError{got: h[4], want: r.version}
	}
	f := Frame{
		Type:    Type(h[5]),
		Flags:   Flags(binary.LittleEndian.Uint16(h[6:])),
		Session: binary.LittleEndian.Uint64(h[8:]),
		Seq:     binary.LittleEndian.Uint64(h[16:]),
	}
	if !f.Type.valid() {
		return Frame{}, fmt.Errorf("transport: unknown frame type %d: %w", h[5], ErrBadFrame)
	}
	if f.Flags&^knownFlags != 0 {
		return Frame{}, fmt.Errorf("transport: %s frame has reserved flags %#x set: %w", f.Type, uint16(f.Flags), ErrBadFrame)
	}
	n := binary.LittleEndian.Uint32(h[24:])
	limit := r.max
	if limit <= 0 {
		limit = DefaultMaxPayload
	}
	if uint64(n) > uint64(limit) {
		return Frame{}, fmt.Errorf("transport: %s frame payload of %d bytes exceeds the %d-byte limit: send smaller chunks or raise MaxPayload: %w", f.Type, n, limit, ErrTooLarge)
	}
	payload, err := r.readPayload(int(n))
	if err != nil {
		return Frame{}, fmt.Errorf("transport: truncated %s frame: got %d of %d payload bytes: %w: %w", f.Type, len(payload), n, ErrBadFrame, err)
	}
	f.Payload = payload
	return f, nil
}

// readPayload reads n bytes into the reused buffer. A buffer that must grow grows at most
// allocStep (or doubling) ahead of the data received so far.
func (r *Reader) readPayload(n int) ([]byte, error) {
	if n <= cap(r.buf) {
		b := r.buf[:n]
		m, err := io.ReadFull(r.r, b)
		if err != nil {
			return b[:m], unexpected(err)
		}
		return b, nil
	}
	b := r.buf[:0]
	for len(b) < n {
		step := min(n-len(b), max(allocStep, len(b)))
		if cap(b)-len(b) < step {
			nb := make([]byte, len(b), len(b)+step)
			copy(nb, b)
			b = nb
		}
		m, err := io.ReadFull(r.r, b[len(b):len(b)+step])
		b = b[:len(b)+m]
		if err != nil {
			r.buf = b[:0]
			return b, unexpected(err)
		}
	}
	r.buf = b
	return b, nil
}

// unexpected turns a clean EOF inside a payload into io.ErrUnexpectedEOF: the stream ended
// mid-frame.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
