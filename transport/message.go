package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Message is a typed frame payload. Every message type in this package implements it with a
// pointer receiver.
//
// AppendBinary appends the encoded payload to b (it follows encoding.BinaryAppender).
// UnmarshalBinary replaces the message's contents with the decoded payload; it copies what it
// keeps, reusing the message's own slices, so decoding into the same value every step
// allocates nothing once the slices have grown.
type Message interface {
	// Type is the frame type that carries this message.
	Type() Type
	AppendBinary(b []byte) ([]byte, error)
	UnmarshalBinary(data []byte) error
}

var (
	_ Message = (*Hello)(nil)
	_ Message = (*HelloAck)(nil)
	_ Message = (*Auth)(nil)
	_ Message = (*Reset)(nil)
	_ Message = (*Forward)(nil)
	_ Message = (*Reply)(nil)
	_ Message = (*Error)(nil)
	_ Message = (*Bye)(nil)
	_ Message = (*Ping)(nil)
	_ Message = (*Pong)(nil)
	_ Message = (*Survey)(nil)
	_ Message = (*Memory)(nil)
	_ Message = (*Assign)(nil)
)

// Marshal encodes m into a new payload.
func Marshal(m Message) ([]byte, error) { return m.AppendBinary(nil) }

// DType is an element type of a tensor on the wire. The zero value means "unspecified".
type DType uint8

// Element types. The numbering is part of the wire format.
const (
	BFloat16 DType = 1 + iota
	Float16
	Float32
	dtypeEnd
)

var dtypeNames = [...]string{BFloat16: "bf16", Float16: "f16", Float32: "f32"}

// String returns the short name used on the command line ("bf16", "f16", "f32"), or
// "dtype(N)" for an unknown or unspecified value.
func (t DType) String() string {
	if t.valid() {
		return dtypeNames[t]
	}
	return fmt.Sprintf("dtype(%d)", uint8(t))
}

// Size returns the bytes per element, or 0 for an unknown dtype.
func (t DType) Size() int {
	switch t {
	case BFloat16, Float16:
		return 2
	case Float32:
		return 4
	}
	return 0
}

func (t DType) valid() bool { return t >= BFloat16 && t < dtypeEnd }

// ParseDType parses "bf16", "f16" or "f32" (also "bfloat16", "float16", "float32").
func ParseDType(s string) (DType, error) {
	switch s {
	case "bf16", "bfloat16":
		return BFloat16, nil
	case "f16", "float16":
		return Float16, nil
	case "f32", "float32":
		return Float32, nil
	}
	return 0, fmt.Errorf("transport: unknown dtype %q: use bf16, f16 or f32", s)
}

// Identity describes one rank in a pipeline: the model it loaded and the layers it runs. The
// handshake compares the identity a dialer expects with the one the listener has.
type Identity struct {
	// Model identifies the checkpoint, typically a content hash; equal strings mean the
	// same weights.
	Model string
	// TotalLayers is the model's number of transformer layers.
	TotalLayers int
	// DType is the dtype of the hidden states the stage exchanges.
	DType DType
	// Stage is the stage index; 0 is the driver, which embeds tokens and runs the loop.
	Stage int
	// Start and End bound the layers [Start, End) that the stage runs.
	Start, End int
}

// Unassigned says whether the identity names no layer range yet: a rank started without a split
// waits for the driver's Assign, and a driver that plans the split from the ranks' free memory
// expects none before it has asked them.
func (id Identity) Unassigned() bool { return id.Start == 0 && id.End == 0 }

// Validate checks that the layer range makes sense: 0 <= Start < End <= TotalLayers, or no range
// at all (Unassigned).
func (id Identity) Validate() error {
	if id.Stage < 0 || id.Stage > math.MaxUint16 {
		return fmt.Errorf("transport: stage index %d is out of range [0, %d]: %w", id.Stage, math.MaxUint16, ErrRange)
	}
	if id.Unassigned() {
		return nil
	}
	if id.Start < 0 || id.Start >= id.End || id.End > id.TotalLayers {
		return fmt.Errorf("transport: stage %d layer range [%d,%d) is not inside the model's %d layers: fix the split: %w",
			id.Stage, id.Start, id.End, id.TotalLayers, ErrRange)
	}
	return nil
}

func (id Identity) append(b []byte) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return b, err
	}
	if err := checkU31("total layers", id.TotalLayers); err != nil {
		return b, err
	}
	if id.DType != 0 && !id.DType.valid() {
		return b, fmt.Errorf("transport: encode: unknown dtype %d: %w", uint8(id.DType), ErrBadFrame)
	}
	b, err := appendStr(b, id.Model, "model id")
	if err != nil {
		return b, err
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(id.TotalLayers))
	b = append(b, byte(id.DType))
	b = binary.LittleEndian.AppendUint16(b, uint16(id.Stage))
	b = binary.LittleEndian.AppendUint32(b, uint32(id.Start))
	return binary.LittleEndian.AppendUint32(b, uint32(id.End)), nil
}

func (d *decoder) identity() Identity {
	id := Identity{Model: d.str(), TotalLayers: d.int31("total layers")}
	id.DType = DType(d.u8())
	if id.DType != 0 && !id.DType.valid() {
		d.fail("unknown dtype %d", uint8(id.DType))
	}
	id.Stage = int(d.u16())
	id.Start = d.int31("layer start")
	id.End = d.int31("layer end")
	if d.err == nil {
		if err := id.Validate(); err != nil {
			d.fail("%v", err)
		}
	}
	return id
}

// Hello opens the handshake in the clear. It reveals nothing about the dialer but whether it
// holds a shared secret. Payload: has-secret u8, nonce [32]byte.
type Hello struct {
	// Secret says whether the dialer holds a shared secret.
	Secret bool
	// Nonce is the dialer's fresh random contribution to the session keys.
	Nonce [32]byte
}

// Type implements Message.
func (*Hello) Type() Type { return TypeHello }

// AppendBinary implements Message.
func (m *Hello) AppendBinary(b []byte) ([]byte, error) {
	b = appendFlag(b, m.Secret)
	return append(b, m.Nonce[:]...), nil
}

// UnmarshalBinary implements Message.
func (m *Hello) UnmarshalBinary(data []byte) error {
	d := decoder{what: "hello", b: data}
	var v Hello
	v.Secret = d.flag("has-secret")
	copy(v.Nonce[:], d.take(32))
	if err := d.done(); err != nil {
		return err
	}
	*m = v
	return nil
}

// HelloAck answers a Hello in the clear, again with nothing but the presence of a secret and a
// fresh nonce. Payload: has-secret u8, nonce [32]byte.
type HelloAck struct {
	// Secret says whether the listener holds a shared secret.
	Secret bool
	// Nonce is the listener's fresh random contribution to the session keys.
	Nonce [32]byte
}

// Type implements Message.
func (*HelloAck) Type() Type { return TypeHelloAck }

// AppendBinary implements Message.
func (m *HelloAck) AppendBinary(b []byte) ([]byte, error) {
	b = appendFlag(b, m.Secret)
	return append(b, m.Nonce[:]...), nil
}

// UnmarshalBinary implements Message.
func (m *HelloAck) UnmarshalBinary(data []byte) error {
	d := decoder{what: "hello-ack", b: data}
	var v HelloAck
	v.Secret = d.flag("has-secret")
	copy(v.Nonce[:], d.take(32))
	if err := d.done(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Auth is the first sealed frame in each direction: opening it proves the sender derived the
// same session keys, hence knows the secret. The dialer sends its own stage and the identity it
// expects; the listener answers with its own stage and identity. Payload: stage u16, identity
// (model string with u16 length, total layers u32, dtype u8, stage u16, start u32, end u32).
type Auth struct {
	// Stage is the sender's stage index (0: the driver).
	Stage int
	// Identity is, from the dialer, the identity it expects; from the listener, its own.
	Identity Identity
}

// Type implements Message.
func (*Auth) Type() Type { return TypeAuth }

// AppendBinary implements Message.
func (m *Auth) AppendBinary(b []byte) ([]byte, error) {
	if err := checkU16("stage", m.Stage); err != nil {
		return b, err
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(m.Stage))
	return m.Identity.append(b)
}

// UnmarshalBinary implements Message.
func (m *Auth) UnmarshalBinary(data []byte) error {
	d := decoder{what: "auth", b: data}
	var v Auth
	v.Stage = int(d.u16())
	v.Identity = d.identity()
	if err := d.done(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Reset starts a new request on a stage: it trims its KV cache to Position tokens (0 drops
// everything) before the next Forward. It is one-way (send it with Conn.Send, no answer):
// frames arrive in order, so the stage applies it before the Forward that follows. A stage
// relays it downstream. Payload: position u32.
type Reset struct {
	Position int
}

// Type implements Message.
func (*Reset) Type() Type { return TypeReset }

// AppendBinary implements Message.
func (m *Reset) AppendBinary(b []byte) ([]byte, error) {
	if err := checkU31("reset position", m.Position); err != nil {
		return b, err
	}
	return binary.LittleEndian.AppendUint32(b, uint32(m.Position)), nil
}

// UnmarshalBinary implements Message.
func (m *Reset) UnmarshalBinary(data []byte) error {
	d := decoder{what: "reset", b: data}
	pos := d.int31("position")
	if err := d.done(); err != nil {
		return err
	}
	m.Position = pos
	return nil
}

// maxDims bounds a Forward tensor's rank.
const maxDims = 8

// MaxTaps bounds how many layers one Forward may ask the stages to tap, and how many tapped
// tensors one Reply may carry.
const MaxTaps = 64

// Forward carries a hidden-state tensor to the next stage. Payload: position u32, tokens u32,
// top-k u16, outputs u16, tap count u8 + tap layers u16 each, has-sampling u8 (+ Sampling),
// dtype u8, ndim u8, ndim dims u32, then the raw elements (the rest of the payload, exactly
// prod(shape) x dtype size bytes).
type Forward struct {
	// Position is the sequence position of the first token (the KV cache offset).
	Position int
	// Tokens is how many tokens the tensor holds: 1 for a decode step, more for a prefill
	// chunk or a speculative verify.
	Tokens int
	// TopK asks the last stage for the k best (id, logit) pairs per position; 0 asks for
	// the sampled token id only.
	TopK int
	// Outputs is how many of the last positions the last stage answers for: 0 or 1 for the
	// last position only (decode, prefill), n > 1 for the greedy token of each of the last n
	// positions (speculative verification of a drafted block).
	Outputs int
	// Taps lists target layers (from 0, at most MaxTaps, no repeats) whose outputs the stages
	// return beside the answer, for every position of the block: each stage that runs one of
	// them adds a Feature to the Reply (a DFlash drafter on the driver conditions on them).
	Taps []int
	// Sample, when set, asks the last stage to sample with the rejection rule of speculative
	// sampling instead of answering greedy tokens (see Sampling); stages before it pass it on.
	Sample *Sampling
	// DType is the element type of Data.
	DType DType
	// Shape is the tensor's shape, e.g. [tokens, hidden].
	Shape []int
	// Data holds the elements in DType, little-endian, as the framework stores them (bf16
	// stays 2 bytes). UnmarshalBinary copies into Data's existing capacity.
	Data []byte
}

// Type implements Message.
func (*Forward) Type() Type { return TypeForward }

// elems returns the element count of shape, or an error for a bad rank, a negative or
// oversized dimension, or a product that would not fit a payload.
func elems(shape []int) (int, error) {
	if len(shape) == 0 || len(shape) > maxDims {
		return 0, fmt.Errorf("tensor rank %d is out of range [1, %d]", len(shape), maxDims)
	}
	n := uint64(1)
	for _, s := range shape {
		if s < 0 || s > math.MaxInt32 {
			return 0, fmt.Errorf("dimension %d is out of range", s)
		}
		n *= uint64(s)
		if n > math.MaxUint32 {
			return 0, fmt.Errorf("tensor has more than %d elements", uint64(math.MaxUint32))
		}
	}
	return int(n), nil
}

// AppendBinary implements Message.
func (m *Forward) AppendBinary(b []byte) ([]byte, error) {
	if err := checkU31("position", m.Position); err != nil {
		return b, err
	}
	if m.Tokens < 1 || m.Tokens > math.MaxInt32 {
		return b, fmt.Errorf("transport: encode forward: %d tokens, want at least 1: %w", m.Tokens, ErrBadFrame)
	}
	if err := checkU16("top-k", m.TopK); err != nil {
		return b, err
	}
	if err := checkU16("outputs", m.Outputs); err != nil {
		return b, err
	}
	if m.Outputs > m.Tokens {
		return b, fmt.Errorf("transport: encode forward: %d outputs for %d tokens: %w", m.Outputs, m.Tokens, ErrBadFrame)
	}
	if err := checkTaps(m.Taps); err != nil {
		return b, fmt.Errorf("transport: encode forward: %v: %w", err, ErrBadFrame)
	}
	if !m.DType.valid() {
		return b, fmt.Errorf("transport: encode forward: unknown dtype %d: %w", uint8(m.DType), ErrBadFrame)
	}
	n, err := elems(m.Shape)
	if err != nil {
		return b, fmt.Errorf("transport: encode forward: %v: %w", err, ErrBadFrame)
	}
	if want := uint64(n) * uint64(m.DType.Size()); uint64(len(m.Data)) != want {
		return b, fmt.Errorf("transport: encode forward: shape %v of %s needs %d bytes, data has %d: %w",
			m.Shape, m.DType, want, len(m.Data), ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(m.Position))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.Tokens))
	b = binary.LittleEndian.AppendUint16(b, uint16(m.TopK))
	b = binary.LittleEndian.AppendUint16(b, uint16(m.Outputs))
	b = append(b, byte(len(m.Taps)))
	for _, l := range m.Taps {
		b = binary.LittleEndian.AppendUint16(b, uint16(l))
	}
	b = appendFlag(b, m.Sample != nil)
	if m.Sample != nil {
		if b, err = m.Sample.append(b, max(m.Outputs, 1)); err != nil {
			return b, err
		}
	}
	b = append(b, byte(m.DType), byte(len(m.Shape)))
	for _, s := range m.Shape {
		b = binary.LittleEndian.AppendUint32(b, uint32(s))
	}
	return append(b, m.Data...), nil
}

// UnmarshalBinary implements Message.
func (m *Forward) UnmarshalBinary(data []byte) error {
	d := decoder{what: "forward", b: data}
	pos := d.int31("position")
	tokens := d.int31("tokens")
	topK := int(d.u16())
	outputs := int(d.u16())
	var taps [MaxTaps]int
	nt := int(d.u8())
	if d.err == nil && nt > MaxTaps {
		d.fail("%d tapped layers, limit %d", nt, MaxTaps)
	}
	for i := 0; i < nt && d.err == nil; i++ {
		taps[i] = int(d.u16())
	}
	if d.err == nil {
		if err := checkTaps(taps[:nt]); err != nil {
			d.fail("%v", err)
		}
	}
	var sample *Sampling
	if d.flag("has-sampling") && d.err == nil {
		sample = d.sampling(max(outputs, 1))
	}
	dt := DType(d.u8())
	ndim := int(d.u8())
	if d.err == nil && tokens < 1 {
		d.fail("zero tokens")
	}
	if d.err == nil && outputs > tokens {
		d.fail("%d outputs for %d tokens", outputs, tokens)
	}
	if d.err == nil && !dt.valid() {
		d.fail("unknown dtype %d", uint8(dt))
	}
	if d.err == nil && (ndim < 1 || ndim > maxDims) {
		d.fail("tensor rank %d is out of range [1, %d]", ndim, maxDims)
	}
	var dims [maxDims]int
	for i := 0; i < ndim && d.err == nil; i++ {
		dims[i] = d.int31("dimension")
	}
	if d.err != nil {
		return d.err
	}
	n, err := elems(dims[:ndim])
	if err != nil {
		d.fail("%v", err)
		return d.err
	}
	raw := d.take(n * dt.Size())
	if err := d.done(); err != nil {
		return err
	}
	m.Position, m.Tokens, m.TopK, m.Outputs, m.DType = pos, tokens, topK, outputs, dt
	m.Taps = append(m.Taps[:0], taps[:nt]...)
	m.Sample = sample
	m.Shape = append(m.Shape[:0], dims[:ndim]...)
	m.Data = append(m.Data[:0], raw...)
	return nil
}

// MaxDrafts bounds the drafts one sampled verification carries.
const MaxDrafts = 1024

// Sampling is a sampled verification: the last Outputs positions of a Forward are the last
// accepted token followed by Drafts, and the last stage keeps each draft with probability
// min(1, p/q) at Temperature, draws the first rejected position from the residual max(0, p - q)
// normalised, or, when every draft is kept (or there are none), the next token from p, on the
// device with a random key made from Seed. Its Reply's Tokens are the kept drafts and that one
// token. Payload: temperature f32, seed u64, draft count u16 + u32 ids, has-proposals u8, then per
// draft a u32 count + (u32 id, f32 probability) pairs.
type Sampling struct {
	Temperature float32
	Seed        uint64
	Drafts      []int
	// Proposals holds, per draft, the distribution the drafter drew it from, as the tokens of
	// non-zero probability; nil means deterministic drafts (each one-hot on its token).
	Proposals [][]Prob
}

// Prob is one token's probability in a draft's distribution.
type Prob struct {
	ID int32
	P  float32
}

func (m *Sampling) append(b []byte, outputs int) ([]byte, error) {
	if t := float64(m.Temperature); !(t > 0) || math.IsInf(t, 0) {
		return b, fmt.Errorf("transport: encode forward: sampling temperature %v: want a finite value above 0: %w", m.Temperature, ErrBadFrame)
	}
	if len(m.Drafts) > MaxDrafts || len(m.Drafts)+1 != outputs {
		return b, fmt.Errorf("transport: encode forward: %d drafts for %d outputs (want outputs - 1, at most %d): %w", len(m.Drafts), outputs, MaxDrafts, ErrBadFrame)
	}
	if m.Proposals != nil && len(m.Proposals) != len(m.Drafts) {
		return b, fmt.Errorf("transport: encode forward: %d proposals for %d drafts: %w", len(m.Proposals), len(m.Drafts), ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(m.Temperature))
	b = binary.LittleEndian.AppendUint64(b, m.Seed)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Drafts)))
	for _, d := range m.Drafts {
		if d < 0 || d > math.MaxInt32 {
			return b, fmt.Errorf("transport: encode forward: draft token %d is out of range: %w", d, ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(d))
	}
	b = appendFlag(b, m.Proposals != nil)
	for _, row := range m.Proposals {
		if len(row) > math.MaxInt32 {
			return b, fmt.Errorf("transport: encode forward: proposal of %d tokens: %w", len(row), ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(row)))
		for _, e := range row {
			if p := float64(e.P); e.ID < 0 || !(p >= 0) || math.IsInf(p, 0) {
				return b, fmt.Errorf("transport: encode forward: proposal entry (%d, %v): want a token id and a finite probability >= 0: %w", e.ID, e.P, ErrBadFrame)
			}
			b = binary.LittleEndian.AppendUint32(b, uint32(e.ID))
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(e.P))
		}
	}
	return b, nil
}

func (d *decoder) sampling(outputs int) *Sampling {
	m := &Sampling{Temperature: math.Float32frombits(d.u32()), Seed: d.u64()}
	if t := float64(m.Temperature); d.err == nil && (!(t > 0) || math.IsInf(t, 0)) {
		d.fail("sampling temperature %v: want a finite value above 0", m.Temperature)
	}
	n := int(d.u16())
	if d.err == nil && (n > MaxDrafts || n+1 != outputs) {
		d.fail("%d drafts for %d outputs (want outputs - 1, at most %d)", n, outputs, MaxDrafts)
	}
	if d.err == nil && n*4 > len(d.b)-d.off {
		d.fail("draft count %d needs %d bytes, only %d left", n, n*4, len(d.b)-d.off)
	}
	for i := 0; i < n && d.err == nil; i++ {
		m.Drafts = append(m.Drafts, d.int31("draft token"))
	}
	if d.flag("has-proposals") && d.err == nil {
		m.Proposals = make([][]Prob, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			c := d.count("proposal entry", 8)
			row := make([]Prob, 0, c)
			for j := 0; j < c && d.err == nil; j++ {
				e := Prob{ID: int32(d.int31("proposal token")), P: math.Float32frombits(d.u32())}
				if p := float64(e.P); d.err == nil && (!(p >= 0) || math.IsInf(p, 0)) {
					d.fail("proposal probability %v: want a finite value >= 0", e.P)
				}
				row = append(row, e)
			}
			m.Proposals = append(m.Proposals, row)
		}
	}
	return m
}

// checkTaps checks a tap list: at most MaxTaps layers, each in [0, 65535], none twice.
func checkTaps(taps []int) error {
	if len(taps) > MaxTaps {
		return fmt.Errorf("%d tapped layers, limit %d", len(taps), MaxTaps)
	}
	for i, l := range taps {
		if l < 0 || l > math.MaxUint16 {
			return fmt.Errorf("tapped layer %d is out of range [0, %d]", l, math.MaxUint16)
		}
		for _, o := range taps[:i] {
			if o == l {
				return fmt.Errorf("layer %d is tapped twice", l)
			}
		}
	}
	return nil
}

// Feature is one tapped layer's output for every position of a Forward's block: Rows x Cols
// elements of DType (rows are positions, Cols the hidden size), raw little-endian bytes.
type Feature struct {
	Layer      int
	DType      DType
	Rows, Cols int
	Data       []byte
}

// Candidate is one (token id, logit) pair of a top-k reply.
type Candidate struct {
	ID    int32
	Logit float32
}

// StageTiming is one stage's own forward time for a step, measured by that stage after its
// result was evaluated, and, for a stage that passed the step on, the time its call to the next
// stage spent on the wire: its round trip minus what every later stage reported (their forward
// and wire times), so the hops of a pipeline add up to the driver's time on the wire.
type StageTiming struct {
	Stage   int
	Forward time.Duration
	// Network is the hop from Stage to Stage+1 (0 on the last stage, and over mlx-ring).
	Network time.Duration
}

// Reply answers a Forward. The last stage fills Tokens (or TopK) and its timing; every stage on
// the way back appends its own timing, so the driver receives the whole list, and its tapped
// features when the Forward asked for layers it runs. Payload: u32 count + u32 ids; u32 count +
// (u32 id, f32 logit) pairs; u16 count + (u16 stage, u64 forward ns, u64 network ns); u8 count +
// (u16 layer, u8 dtype, u32 rows, u32 cols, rows x cols elements).
type Reply struct {
	// Tokens holds the sampled token ids, one per position that was asked for.
	Tokens []int32
	// TopK holds k candidates per position when the Forward asked for them, position-major.
	TopK []Candidate
	// Timings holds each stage's forward time, in the order the stages appended them.
	Timings []StageTiming
	// Features holds the tapped layers' outputs (see Forward.Taps), at most MaxTaps.
	Features []Feature
}

// Type implements Message.
func (*Reply) Type() Type { return TypeReply }

// timingSize is the encoded size of a StageTiming.
const timingSize = 18

// AddTiming appends one stage's forward time.
func (m *Reply) AddTiming(stage int, forward time.Duration) {
	m.Timings = append(m.Timings, StageTiming{Stage: stage, Forward: forward})
}

// AppendBinary implements Message.
func (m *Reply) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Timings) > math.MaxUint16 {
		return b, fmt.Errorf("transport: encode reply: %d timings, limit %d: %w", len(m.Timings), math.MaxUint16, ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Tokens)))
	for _, t := range m.Tokens {
		if t < 0 {
			return b, fmt.Errorf("transport: encode reply: negative token id %d: %w", t, ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(t))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.TopK)))
	for _, c := range m.TopK {
		if c.ID < 0 {
			return b, fmt.Errorf("transport: encode reply: negative token id %d: %w", c.ID, ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(c.ID))
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(c.Logit))
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Timings)))
	for _, t := range m.Timings {
		if err := checkU16("timing stage", t.Stage); err != nil {
			return b, err
		}
		if t.Forward < 0 || t.Network < 0 {
			return b, fmt.Errorf("transport: encode reply: stage %d has negative forward time %v or network time %v: %w", t.Stage, t.Forward, t.Network, ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(t.Stage))
		b = binary.LittleEndian.AppendUint64(b, uint64(t.Forward))
		b = binary.LittleEndian.AppendUint64(b, uint64(t.Network))
	}
	if len(m.Features) > MaxTaps {
		return b, fmt.Errorf("transport: encode reply: %d features, limit %d: %w", len(m.Features), MaxTaps, ErrBadFrame)
	}
	b = append(b, byte(len(m.Features)))
	for _, f := range m.Features {
		if err := checkU16("feature layer", f.Layer); err != nil {
			return b, err
		}
		if !f.DType.valid() {
			return b, fmt.Errorf("transport: encode reply: feature of layer %d has unknown dtype %d: %w", f.Layer, uint8(f.DType), ErrBadFrame)
		}
		n, err := elems([]int{f.Rows, f.Cols})
		if err != nil {
			return b, fmt.Errorf("transport: encode reply: feature of layer %d: %v: %w", f.Layer, err, ErrBadFrame)
		}
		if want := uint64(n) * uint64(f.DType.Size()); uint64(len(f.Data)) != want {
			return b, fmt.Errorf("transport: encode reply: feature of layer %d is [%d %d] %s, %d bytes; data has %d: %w",
				f.Layer, f.Rows, f.Cols, f.DType, want, len(f.Data), ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(f.Layer))
		b = append(b, byte(f.DType))
		b = binary.LittleEndian.AppendUint32(b, uint32(f.Rows))
		b = binary.LittleEndian.AppendUint32(b, uint32(f.Cols))
		b = append(b, f.Data...)
	}
	return b, nil
}

// UnmarshalBinary implements Message.
func (m *Reply) UnmarshalBinary(data []byte) error {
	d := decoder{what: "reply", b: data}
	tokens := m.Tokens[:0]
	n := d.count("token", 4)
	for range n {
		tokens = append(tokens, int32(d.int31("token id")))
	}
	cands := m.TopK[:0]
	n = d.count("candidate", 8)
	for range n {
		id := int32(d.int31("token id"))
		cands = append(cands, Candidate{ID: id, Logit: math.Float32frombits(d.u32())})
	}
	timings := m.Timings[:0]
	nt := int(d.u16())
	if d.err == nil && nt*timingSize > len(data)-d.off {
		d.fail("timing count %d needs %d bytes, only %d left", nt, nt*timingSize, len(data)-d.off)
	}
	for i := 0; i < nt && d.err == nil; i++ {
		stage := int(d.u16())
		fw, net := d.u64(), d.u64()
		if fw > math.MaxInt64 || net > math.MaxInt64 {
			d.fail("stage %d forward time %d ns or network time %d ns is out of range", stage, fw, net)
		}
		timings = append(timings, StageTiming{Stage: stage, Forward: time.Duration(fw), Network: time.Duration(net)})
	}
	feats := m.Features[:0]
	nf := int(d.u8())
	if d.err == nil && nf > MaxTaps {
		d.fail("%d features, limit %d", nf, MaxTaps)
	}
	for i := 0; i < nf && d.err == nil; i++ {
		f := Feature{Layer: int(d.u16()), DType: DType(d.u8())}
		f.Rows, f.Cols = d.int31("feature rows"), d.int31("feature cols")
		if d.err == nil && !f.DType.valid() {
			d.fail("feature of layer %d has unknown dtype %d", f.Layer, uint8(f.DType))
		}
		if d.err != nil {
			break
		}
		n, err := elems([]int{f.Rows, f.Cols})
		if err != nil {
			d.fail("feature of layer %d: %v", f.Layer, err)
			break
		}
		raw := d.take(n * f.DType.Size())
		if d.err != nil {
			break
		}
		if i < cap(feats) {
			f.Data = append(feats[:i+1][i].Data[:0], raw...) // reuse the previous buffer
		} else {
			f.Data = append([]byte(nil), raw...)
		}
		feats = append(feats, f)
	}
	if err := d.done(); err != nil {
		return err
	}
	m.Tokens, m.TopK, m.Timings, m.Features = tokens, cands, timings, feats
	return nil
}

// Code classifies an Error so the receiving side can map it back to a sentinel error.
type Code uint16

// Error codes. The numbering is part of the wire format.
const (
	// CodeInternal is a failure on the peer that has no sentinel (an engine error, say).
	CodeInternal Code = iota
	// CodeVersion maps to ErrVersion.
	CodeVersion
	// CodeModel maps to ErrModelMismatch.
	CodeModel
	// CodeAuth maps to ErrAuth.
	CodeAuth
	// CodeRange maps to ErrRange.
	CodeRange
	// CodeBadFrame maps to ErrBadFrame.
	CodeBadFrame
	// CodeTooLarge maps to ErrTooLarge.
	CodeTooLarge
	// CodeBusy maps to ErrBusy.
	CodeBusy
	// CodeLimit maps to ErrLimit.
	CodeLimit
)

var codeErrs = [...]error{
	CodeVersion:  ErrVersion,
	CodeModel:    ErrModelMismatch,
	CodeAuth:     ErrAuth,
	CodeRange:    ErrRange,
	CodeBadFrame: ErrBadFrame,
	CodeTooLarge: ErrTooLarge,
	CodeBusy:     ErrBusy,
	CodeLimit:    ErrLimit,
}

// codeOf returns the code for err's sentinel, CodeInternal if it has none.
func codeOf(err error) Code {
	for c, s := range codeErrs {
		if s != nil && errors.Is(err, s) {
			return Code(c)
		}
	}
	return CodeInternal
}

// maxErrorMessage bounds Error.Message on the wire; longer messages are truncated.
const maxErrorMessage = math.MaxUint16

// Error reports a failure to the peer, which receives it as an error: *Error implements error
// and unwraps to the sentinel of its Code, so errors.Is(err, ErrAuth) holds on both sides of a
// refused handshake. Payload: code u16, message string with u16 length (truncated to 65535
// bytes).
type Error struct {
	Code    Code
	Message string
}

// Type implements Message.
func (*Error) Type() Type { return TypeError }

// Error returns the peer's message.
func (m *Error) Error() string { return m.Message }

// Unwrap returns the sentinel error of the code, or nil.
func (m *Error) Unwrap() error {
	if int(m.Code) < len(codeErrs) {
		return codeErrs[m.Code]
	}
	return nil
}

// AppendBinary implements Message.
func (m *Error) AppendBinary(b []byte) ([]byte, error) {
	b = binary.LittleEndian.AppendUint16(b, uint16(m.Code))
	msg := m.Message
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	return appendStr(b, msg, "error message")
}

// UnmarshalBinary implements Message.
func (m *Error) UnmarshalBinary(data []byte) error {
	d := decoder{what: "error", b: data}
	var v Error
	v.Code = Code(d.u16())
	v.Message = d.str()
	if err := d.done(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Bye announces an orderly close. Payload: reason string with u16 length.
type Bye struct {
	Reason string
}

// Type implements Message.
func (*Bye) Type() Type { return TypeBye }

// AppendBinary implements Message.
func (m *Bye) AppendBinary(b []byte) ([]byte, error) { return appendStr(b, m.Reason, "bye reason") }

// UnmarshalBinary implements Message.
func (m *Bye) UnmarshalBinary(data []byte) error {
	d := decoder{what: "bye", b: data}
	reason := d.str()
	if err := d.done(); err != nil {
		return err
	}
	m.Reason = reason
	return nil
}

// Ping asks the peer for a Pong with the same token. Payload: token u64.
type Ping struct {
	Token uint64
}

// Type implements Message.
func (*Ping) Type() Type { return TypePing }

// AppendBinary implements Message.
func (m *Ping) AppendBinary(b []byte) ([]byte, error) {
	return binary.LittleEndian.AppendUint64(b, m.Token), nil
}

// UnmarshalBinary implements Message.
func (m *Ping) UnmarshalBinary(data []byte) error {
	d := decoder{what: "ping", b: data}
	tok := d.u64()
	if err := d.done(); err != nil {
		return err
	}
	m.Token = tok
	return nil
}

// Pong answers a Ping, echoing its token. Payload: token u64.
type Pong struct {
	Token uint64
}

// Type implements Message.
func (*Pong) Type() Type { return TypePong }

// AppendBinary implements Message.
func (m *Pong) AppendBinary(b []byte) ([]byte, error) {
	return binary.LittleEndian.AppendUint64(b, m.Token), nil
}

// UnmarshalBinary implements Message.
func (m *Pong) UnmarshalBinary(data []byte) error {
	d := decoder{what: "pong", b: data}
	tok := d.u64()
	if err := d.done(); err != nil {
		return err
	}
	m.Token = tok
	return nil
}

// newMessage returns an empty message of type t, or nil for an unknown type.
func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeHelloAck:
		return new(HelloAck)
	case TypeAuth:
		return new(Auth)
	case TypeReset:
		return new(Reset)
	case TypeForward:
		return new(Forward)
	case TypeReply:
		return new(Reply)
	case TypeError:
		return new(Error)
	case TypeBye:
		return new(Bye)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeSurvey:
		return new(Survey)
	case TypeMemory:
		return new(Memory)
	case TypeAssign:
		return new(Assign)
	}
	return nil
}

// DecodeMessage decodes a frame's payload into a new message of the frame's type.
func DecodeMessage(f Frame) (Message, error) {
	m := newMessage(f.Type)
	if m == nil {
		return nil, fmt.Errorf("transport: unknown frame type %d: %w", uint8(f.Type), ErrBadFrame)
	}
	if err := m.UnmarshalBinary(f.Payload); err != nil {
		return nil, err
	}
	return m, nil
}
