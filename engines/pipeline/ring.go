package pipeline

// # The mlx-ring protocol
//
// With --transport mlx-ring the stages form one MLX ring group (backend "ring"): stage k is MLX
// rank k, the hostfile lists one address per stage, and every message goes from rank k to rank
// k+1 mod N, the only pairs MLX's ring can send between. Hidden states go 0 -> 1 -> ... -> N-1 and
// the last stage's reply goes N-1 -> 0, which is its ring neighbour, so a step is one lap of the
// ring (the project's TCP framing instead returns the reply hop by hop).
//
// Every message is one MLX uint8 array sent with distributed::send and received with
// distributed::recv. MLX's ring carries raw bytes with no framing, so the receiver must know each
// message's size in advance; the protocol therefore has three fixed sizes, all known to every rank
// once the model and N are:
//
//	header (H)  = 48 + 8N bytes: 12 little-endian int32 words, then N int64 forward times (ns)
//	slot        = H + one position's hidden state (hidden_size x dtype size): every message
//	              that travels downstream (reset, forward, error, bye)
//	reply       = H + 4 x max(1, outputs) + 8 x topK: the last stage's answer to rank 0, sized by
//	              the forward it answers (token ids, then (id, float32 log-prob bits) pairs)
//
// A message whose payload does not fit its fixed size (a prefill chunk's hidden states past the
// first position, an error text) is followed by one continuation message of exactly header word
// "length" bytes. Putting the header and a decode step's hidden state in one array makes a decode
// hop one send and one receive: each MLX send or receive is an Eval of its own, and a header sent
// as its own array added 20-30 us to the median loopback round trip of 65-85 us on the 2-core x86
// machines (mlx.BenchmarkRingRoundTrip).
//
// Header words: 0 magic "HPR1"; 1 op; 2 seq (low 32 bits of the driver's); 3 position; 4 tokens
// (forward: positions carried; reply: token ids carried); 5 top-k (forward: asked; reply:
// candidates carried); 6 outputs (forward: positions to answer, 0/1 = the last); 7 hidden dtype
// (the shim's code); 8 stage (the rank that wrote it; an error: the stage that failed); 9 length
// (bytes of the continuation); 10 error code (transport.Code); 11 reserved, 0. Then forward time
// per stage: each stage fills its own slot, so the reply brings all of them to rank 0.
//
// Ops: hello (H bytes + continuation: the identity every stage checks; the last stage answers rank
// 0 with an H-byte hello), reset (trim caches to position; relayed; no answer), forward (relayed
// with the new hidden state; the last stage answers with a reply), error (relayed to rank 0; a
// failed reset is reported on the next forward), bye (relayed; every stage then exits).
//
// Hidden states never pass through the host: a stage's output stays an evaluated device array
// (engines.StageOptions.DeviceHidden), its bytes are viewed as uint8 (mlx.View) and joined on the
// device to the header, which is the only part built from Go bytes; a receiver reads back only
// the header and hands the payload, viewed as the compute dtype, to its stage as an array. Control
// messages (hello, reset, error, bye) and the last stage's reply are small and travel as bytes.
//
// Threading: each process runs its ring operations on a Worker of their own, not on the stage's.
// MLX (since 0.31.2) gives every thread its own default stream and supports threads that each use
// their own arrays. The arrays that cross between the two threads are always evaluated first
// (a stage's output before it is returned, a received payload before it is handed on), so neither
// thread's graph ever depends on work pending on the other's stream. The payoff is that a receive MLX cannot interrupt (a peer that
// is silent but alive) blocks only the ring's thread: the stage can still be closed, and the
// driver can return a timeout. The ring worker and the stage never run at the same time (each
// process alternates them), which the mlx package's per-process scope state requires; the ring's
// worker is therefore an overlapping one, outside the process-wide turn, so a stuck receive
// cannot block the stage's Close.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/transport"
)

const (
	ringMagic = 0x31525048 // "HPR1" in little-endian bytes
	ringWords = 12
	// ringMaxLength bounds a continuation message, as the TCP framing bounds a payload.
	ringMaxLength = transport.DefaultMaxPayload
)

type ringOp int32

const (
	opHello ringOp = iota + 1
	opReset
	opForward
	opReply
	opError
	opBye
	opEnd
)

var ringOpNames = [...]string{opHello: "hello", opReset: "reset", opForward: "forward", opReply: "reply",
	opError: "error", opBye: "bye"}

func (o ringOp) String() string {
	if o > 0 && o < opEnd {
		return ringOpNames[o]
	}
	return fmt.Sprintf("op(%d)", int32(o))
}

// ringHeader is the fixed part of every ring message (see the protocol above).
type ringHeader struct {
	op       ringOp
	seq      uint32
	position int
	tokens   int
	topK     int
	outputs  int
	dtype    int
	stage    int
	length   int
	code     transport.Code
	forward  []time.Duration // one per stage
}

func ringHeaderSize(stages int) int { return 4*ringWords + 8*stages }

// put writes h into b[:ringHeaderSize(len(h.forward))].
func (h *ringHeader) put(b []byte) {
	le := binary.LittleEndian
	words := [ringWords]int32{ringMagic, int32(h.op), int32(h.seq), int32(h.position), int32(h.tokens), int32(h.topK),
		int32(h.outputs), int32(h.dtype), int32(h.stage), int32(h.length), int32(h.code), 0}
	for i, w := range words {
		le.PutUint32(b[4*i:], uint32(w))
	}
	for i, d := range h.forward {
		le.PutUint64(b[4*ringWords+8*i:], uint64(d))
	}
}

// parseRingHeader reads the header at the start of b for a ring of the given stages.
func parseRingHeader(b []byte, stages int) (ringHeader, error) {
	var h ringHeader
	if len(b) < ringHeaderSize(stages) {
		return h, fmt.Errorf("ring message of %d bytes is shorter than its %d-byte header: %w", len(b), ringHeaderSize(stages), transport.ErrBadFrame)
	}
	le := binary.LittleEndian
	var w [ringWords]int32
	for i := range w {
		w[i] = int32(le.Uint32(b[4*i:]))
	}
	if uint32(w[0]) != ringMagic {
		return h, fmt.Errorf("ring message starts with %#08x, not the magic %#08x (the ranks are out of step): %w", uint32(w[0]), uint32(ringMagic), transport.ErrBadFrame)
	}
	h = ringHeader{op: ringOp(w[1]), seq: uint32(w[2]), position: int(w[3]), tokens: int(w[4]), topK: int(w[5]),
		outputs: int(w[6]), dtype: int(w[7]), stage: int(w[8]), length: int(w[9]), code: transport.Code(w[10])}
	switch {
	case h.op <= 0 || h.op >= opEnd:
		return h, fmt.Errorf("ring message has unknown op %d: %w", w[1], transport.ErrBadFrame)
	case h.position < 0 || h.tokens < 0 || h.topK < 0 || h.outputs < 0 || h.length < 0 || h.stage < 0 || h.stage >= stages || w[10] < 0:
		return h, fmt.Errorf("ring %v message has a negative or out-of-range field %v: %w", h.op, w[2:11], transport.ErrBadFrame)
	case w[11] != 0:
		return h, fmt.Errorf("ring %v message sets the reserved word: %w", h.op, transport.ErrBadFrame)
	}
	h.forward = make([]time.Duration, stages)
	for i := range h.forward {
		ns := int64(le.Uint64(b[4*ringWords+8*i:]))
		if ns < 0 {
			return h, fmt.Errorf("ring %v message: stage %d forward time %d ns is negative: %w", h.op, i, ns, transport.ErrBadFrame)
		}
		h.forward[i] = time.Duration(ns)
	}
	return h, nil
}

// ringSizes are a pipeline's fixed message sizes.
type ringSizes struct {
	stages int
	header int
	pos    int // bytes of one position's hidden state
}

func (s ringSizes) slot() int { return s.header + s.pos }

func (s ringSizes) reply(outputs, topK int) int { return s.header + 4*max(1, outputs) + 8*topK }

// message returns a fresh message of n bytes with h at its start and payload after it.
func (s ringSizes) message(n int, h ringHeader, payload []byte) []byte {
	b := make([]byte, n)
	if h.forward == nil {
		h.forward = make([]time.Duration, s.stages)
	}
	h.put(b)
	copy(b[s.header:], payload)
	return b
}

// ringNode is one process's end of the ring: the group, and the worker its arrays live on.
type ringNode struct {
	ringSizes
	// dtype and hidden describe one position's hidden state (pos bytes).
	dtype  mlx.DType
	hidden int
	w      *mlx.Worker
	g      *mlx.Group
	stage  int
	// broken is set once the ring can no longer be trusted to be in step (an MLX failure, or a
	// call abandoned while MLX was still sending or receiving); every later call returns it.
	broken error
	// stuck means an abandoned operation may still be running on w, so w cannot be closed.
	stuck bool
}

func (n *ringNode) right() int { return (n.stage + 1) % n.stages }
func (n *ringNode) left() int  { return (n.stage + n.stages - 1) % n.stages }

// remoteError is a failure a stage reported over the ring; the ring stays in step.
type remoteError struct{ err *transport.Error }

func (e remoteError) Error() string { return e.err.Error() }
func (e remoteError) Unwrap() error { return e.err }

// do runs fn on the ring's worker and waits at most wait (no limit when 0) and until ctx ends.
// A call that gives up leaves fn running (MLX cannot interrupt a send or receive), so the ring is
// marked broken.
func (n *ringNode) do(ctx context.Context, wait time.Duration, what string, fn func() error) error {
	if n.broken != nil {
		return n.broken
	}
	done := make(chan error, 1)
	go func() { done <- n.w.Do(context.Background(), fn) }()
	var expire <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		expire = t.C
	}
	select {
	case err := <-done:
		var re remoteError
		if err != nil && !errors.As(err, &re) {
			n.broken = fmt.Errorf("mlx-ring %s at stage %d (ring neighbours: stage %d before, %d after): %w", what, n.stage, n.left(), n.right(), err)
			return n.broken
		}
		return err
	case <-ctx.Done():
		n.broken, n.stuck = fmt.Errorf("mlx-ring %s: %w", what, ctx.Err()), true
	case <-expire:
		n.broken, n.stuck = fmt.Errorf("mlx-ring %s: no answer from stage %d within %v: %w", what, n.left(), wait, transport.ErrTimeout), true
	}
	return n.broken
}

// send and recv run on the ring's worker, one MLX Eval each (MLX does not order two
// communications evaluated together).
func (n *ringNode) send(dst int, b []byte) error {
	s := mlx.NewScope()
	defer s.Close()
	return mlx.Eval(n.g.Send(mlx.FromBytes(b, mlx.Uint8, len(b)), dst))
}

func (n *ringNode) recv(src, size int) ([]byte, error) {
	s := mlx.NewScope()
	defer s.Close()
	return n.g.Recv(mlx.Uint8, src, size).Bytes()
}

// sendHidden sends a forward message whose hidden state x ([1, tokens, hidden], evaluated, on the
// device) never passes through the host: the header is the only array built from Go bytes; the
// first position's bytes join it on the device (one send per decode hop, as with bytes), and the
// other positions of a prefill chunk follow as the continuation, a view of x's bytes.
func (n *ringNode) sendHidden(dst int, h ringHeader, x mlx.Array, tokens int) error {
	s := mlx.NewScope()
	defer s.Close()
	if h.forward == nil {
		h.forward = make([]time.Duration, n.stages)
	}
	hb := make([]byte, n.header)
	h.put(hb)
	flat := mlx.Reshape(mlx.View(x, mlx.Uint8), tokens*n.pos)
	msg := mlx.Concat(0, mlx.FromBytes(hb, mlx.Uint8, n.header), mlx.Slice(flat, []int{0}, []int{n.pos}))
	if err := mlx.Eval(n.g.Send(msg, dst)); err != nil {
		return err
	}
	if tokens == 1 {
		return nil
	}
	return mlx.Eval(n.g.Send(mlx.Slice(flat, []int{n.pos}, []int{tokens * n.pos}), dst))
}

// recvStep receives the next downstream message from src. A forward's hidden state stays on the
// device: only its header is read back, and it returns the positions as an evaluated array
// [1, tokens, hidden] the caller frees (invalid when the header does not describe them; the
// caller refuses it). Any other message comes back as bytes, with its continuation.
func (n *ringNode) recvStep(src int) (h ringHeader, x mlx.Array, msg, cont []byte, err error) {
	s := mlx.NewScope()
	defer s.Close()
	raw := n.g.Recv(mlx.Uint8, src, n.slot())
	if err := mlx.Eval(raw); err != nil {
		return h, x, nil, nil, err
	}
	hb, err := mlx.Slice(raw, []int{0}, []int{n.header}).Bytes()
	if err != nil {
		return h, x, nil, nil, err
	}
	if h, err = parseRingHeader(hb, n.stages); err != nil {
		return h, x, nil, nil, err
	}
	if h.length > ringMaxLength {
		return h, x, nil, nil, fmt.Errorf("ring %v message announces %d more bytes, limit %d: %w", h.op, h.length, ringMaxLength, transport.ErrTooLarge)
	}
	if h.op != opForward {
		if msg, err = raw.Bytes(); err != nil {
			return h, x, nil, nil, err
		}
		if h.length > 0 {
			cont, err = n.recv(src, h.length)
		}
		return h, x, msg, cont, err
	}
	payload := mlx.Slice(raw, []int{n.header}, []int{n.slot()})
	if h.length > 0 {
		c := n.g.Recv(mlx.Uint8, src, h.length)
		if err := mlx.Eval(c); err != nil {
			return h, x, nil, nil, err
		}
		payload = mlx.Concat(0, payload, c)
	}
	if h.tokens < 1 || h.length != (h.tokens-1)*n.pos || h.dtype != int(n.dtype) {
		return h, x, nil, nil, nil // forward refuses it, with the reason
	}
	x = mlx.Reshape(mlx.View(payload, n.dtype), 1, h.tokens, n.hidden)
	if err := mlx.Eval(x); err != nil {
		return h, mlx.Array{}, nil, nil, err
	}
	s.Keep(x)
	return h, x, nil, nil, nil
}

// recvMessage receives a message of size bytes from src, its continuation if it announces one,
// and parses its header.
func (n *ringNode) recvMessage(src, size int) (ringHeader, []byte, []byte, error) {
	b, err := n.recv(src, size)
	if err != nil {
		return ringHeader{}, nil, nil, err
	}
	h, err := parseRingHeader(b, n.stages)
	if err != nil {
		return h, nil, nil, err
	}
	var cont []byte
	if h.length > 0 {
		if h.length > ringMaxLength {
			return h, nil, nil, fmt.Errorf("ring %v message announces %d more bytes, limit %d: %w", h.op, h.length, ringMaxLength, transport.ErrTooLarge)
		}
		if cont, err = n.recv(src, h.length); err != nil {
			return h, nil, nil, err
		}
	}
	return h, b, cont, nil
}

// sendMessage sends msg and, if non-empty, its continuation.
func (n *ringNode) sendMessage(dst int, msg, cont []byte) error {
	if err := n.send(dst, msg); err != nil {
		return err
	}
	if len(cont) == 0 {
		return nil
	}
	return n.send(dst, cont)
}

func (n *ringNode) close() {
	n.g.Free()
	if !n.stuck {
		n.w.Close()
	}
}

// ringJoin is a ring group being joined in the background.
type ringJoin struct {
	stage int
	done  chan ringJoined
}

type ringJoined struct {
	g   *mlx.Group
	err error
}

// startRing starts joining the ring as stage's rank. With hostfile set it first writes
// MLX_RANK and MLX_HOSTFILE into this process's environment (where MLX reads them), before any
// other thread is started for the pipeline; with hostfile empty the environment must already
// name this stage's rank and a hostfile.
func startRing(plan Plan, stage int, hostfile string) (*ringJoin, error) {
	if plan.Transport == TransportJACCL {
		return startJACCL(stage)
	}
	if hostfile != "" {
		if err := os.Setenv("MLX_RANK", strconv.Itoa(stage)); err != nil {
			return nil, err
		}
		if err := os.Setenv("MLX_HOSTFILE", hostfile); err != nil {
			return nil, err
		}
	}
	if stage == 0 && os.Getenv("MLX_RANK") == "" {
		if err := os.Setenv("MLX_RANK", "0"); err != nil {
			return nil, err
		}
	}
	hf := os.Getenv("MLX_HOSTFILE")
	if hf == "" {
		return nil, fmt.Errorf("mlx-ring: no hostfile: set MLX_HOSTFILE to MLX's JSON list of one [\"ip:port\"] per stage")
	}
	if r := os.Getenv("MLX_RANK"); r != strconv.Itoa(stage) {
		return nil, fmt.Errorf("mlx-ring: MLX_RANK is %q but this process serves stage %d: the ring's rank is the stage", r, stage)
	}
	if err := checkHostfile(hf, len(plan.Split)); err != nil {
		return nil, err
	}
	j := &ringJoin{stage: stage, done: make(chan ringJoined, 1)}
	go func() {
		g, err := mlx.NewGroup(mlx.GroupOptions{})
		j.done <- ringJoined{g, err}
	}()
	return j, nil
}

// checkHostfile reads MLX's hostfile and checks that it lists one rank per stage, so that a
// mismatch is an error here rather than a ring that never closes.
func checkHostfile(path string, stages int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("mlx-ring: hostfile: %w", err)
	}
	var hosts [][]string
	if err := json.Unmarshal(b, &hosts); err != nil {
		return fmt.Errorf("mlx-ring: hostfile %s: %v: want a JSON list with one [\"ip:port\"] list per stage", path, err)
	}
	if len(hosts) != stages {
		return fmt.Errorf("mlx-ring: hostfile %s lists %d ranks but the split has %d stages", path, len(hosts), stages)
	}
	return nil
}

// wait returns the joined group, giving up when ctx ends or, if ctx has no deadline, after
// transport.DefaultDialTimeout (as transport.Dial does).
func (j *ringJoin) wait(ctx context.Context) (*mlx.Group, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, transport.DefaultDialTimeout)
		defer cancel()
	}
	select {
	case r := <-j.done:
		return r.g, r.err
	case <-ctx.Done():
		j.abandon()
		return nil, fmt.Errorf("mlx-ring: rank %d: the ring did not connect (is every stage running, with the same hostfile?): %w", j.stage, ctx.Err())
	}
}

// abandon frees the group if the join ever completes; MLX's join cannot be interrupted.
func (j *ringJoin) abandon() {
	go func() {
		if r := <-j.done; r.g != nil {
			r.g.Free()
		}
	}()
}

// node waits for the group and checks it against the plan.
func (j *ringJoin) node(ctx context.Context, plan Plan, st *engines.Stage) (*ringNode, error) {
	g, err := j.wait(ctx)
	if err != nil {
		return nil, err
	}
	if g.Size() != len(plan.Split) || g.Rank() != j.stage {
		g.Free()
		return nil, fmt.Errorf("mlx-ring: joined as rank %d of %d; the plan wants rank %d of %d", g.Rank(), g.Size(), j.stage, len(plan.Split))
	}
	sizes := ringSizes{stages: len(plan.Split), header: ringHeaderSize(len(plan.Split)),
		pos: st.Config().HiddenSize * st.DType().Size()}
	return &ringNode{ringSizes: sizes, dtype: st.DType(), hidden: st.Config().HiddenSize, w: mlx.NewOverlappingWorker(), g: g, stage: j.stage}, nil
}

// ringIdentity is what every stage must agree on, checked by the hello.
func ringIdentity(plan Plan, st *engines.Stage) []string {
	secret := "-"
	if plan.Secret != "" {
		// A digest only proves both sides were given the same secret; MLX's ring itself is not
		// authenticated.
		sum := sha256.Sum256([]byte("hippo mlx-ring secret\x00" + plan.Secret))
		secret = hex.EncodeToString(sum[:8])
	}
	return []string{"model=" + plan.Fingerprint, "layers=" + strconv.Itoa(plan.Layers), "split=" + FormatSplit(plan.Split),
		"dtype=" + st.DType().String(), "hidden=" + strconv.Itoa(st.Config().HiddenSize), "secret=" + secret}
}

// checkIdentity compares the driver's identity with ours and names the first difference.
func checkIdentity(stage int, theirs string, ours []string) *transport.Error {
	got := strings.Split(theirs, "\n")
	for i, kv := range ours {
		if i < len(got) && got[i] == kv {
			continue
		}
		key, mine, _ := strings.Cut(kv, "=")
		other := "(missing)"
		if i < len(got) {
			_, other, _ = strings.Cut(got[i], "=")
		}
		code, fix := transport.CodeModel, "use the same checkpoint, dtype and split on every machine"
		switch key {
		case "split", "layers":
			code = transport.CodeRange
		case "secret":
			code, fix = transport.CodeAuth, "give every stage the same secret through $"+transport.SecretEnv+" or --secret-file"
		}
		return &transport.Error{Code: code, Message: fmt.Sprintf("stage %d: %s is %s here but %s at the driver: %s", stage, key, mine, other, fix)}
	}
	return nil
}

// ringLink is the driver's end of the ring (rank 0).
type ringLink struct {
	n     *ringNode
	dtype int
}

// openRingLink waits for the ring and says hello: every stage checks the driver's identity.
func openRingLink(ctx context.Context, plan Plan, j *ringJoin, first *engines.Stage) (*ringLink, error) {
	n, err := j.node(ctx, plan, first)
	if err != nil {
		return nil, err
	}
	id := []byte(strings.Join(ringIdentity(plan, first), "\n"))
	hello := n.message(n.header, ringHeader{op: opHello, length: len(id)}, nil)
	// The answer comes once every stage has loaded its layers: wait as long as ctx allows, as
	// transport.Dial does.
	var wait time.Duration
	if _, ok := ctx.Deadline(); !ok {
		wait = transport.DefaultDialTimeout
	}
	err = n.do(ctx, wait, "hello", func() error {
		if err := n.sendMessage(n.right(), hello, id); err != nil {
			return err
		}
		h, _, text, err := n.recvMessage(n.left(), n.header)
		if err != nil {
			return err
		}
		switch h.op {
		case opHello:
			return nil
		case opError:
			return &transport.Error{Code: h.code, Message: string(text)}
		}
		return fmt.Errorf("answered hello with %v: %w", h.op, transport.ErrBadFrame)
	})
	if err != nil {
		n.close()
		return nil, err
	}
	return &ringLink{n: n, dtype: int(first.DType())}, nil
}

// Send implements link for the one-way Reset.
func (l *ringLink) Send(ctx context.Context, session, seq uint64, m transport.Message) error {
	r, ok := m.(*transport.Reset)
	if !ok {
		return fmt.Errorf("mlx-ring: the driver sends %T only with Call", m)
	}
	msg := l.n.message(l.n.slot(), ringHeader{op: opReset, seq: uint32(seq), position: r.Position}, nil)
	return l.n.do(ctx, transport.DefaultTimeout, "reset", func() error { return l.n.send(l.n.right(), msg) })
}

// Call implements link: a Forward goes round the ring and the last stage's Reply comes back.
func (l *ringLink) Call(ctx context.Context, session, seq uint64, req, reply transport.Message) error {
	fw, ok := req.(*transport.Forward)
	rp, ok2 := reply.(*transport.Reply)
	if !ok || !ok2 {
		return fmt.Errorf("mlx-ring: Call carries a Forward and a Reply, not %T and %T", req, reply)
	}
	n := l.n
	if fw.Tokens < 1 || len(fw.Data) != fw.Tokens*n.pos {
		return fmt.Errorf("mlx-ring: forward of %d positions carries %d bytes; want %d per position", fw.Tokens, len(fw.Data), n.pos)
	}
	if len(fw.Data)-n.pos > ringMaxLength {
		return fmt.Errorf("mlx-ring: forward of %d bytes, limit %d: %w", len(fw.Data), ringMaxLength, transport.ErrTooLarge)
	}
	h := ringHeader{op: opForward, seq: uint32(seq), position: fw.Position, tokens: fw.Tokens, topK: fw.TopK,
		outputs: fw.Outputs, dtype: l.dtype, length: (fw.Tokens - 1) * n.pos}
	msg, cont := n.message(n.slot(), h, fw.Data[:n.pos]), fw.Data[n.pos:]
	return l.roundTrip(ctx, seq, fw, rp, func() error { return n.sendMessage(n.right(), msg, cont) })
}

// CallArray is Call with the hidden state as a device array x ([1, fw.Tokens, hidden], evaluated;
// fw.Data is unused): it goes to MLX's send without a copy through the host. It takes x over and
// frees it.
func (l *ringLink) CallArray(ctx context.Context, seq uint64, fw *transport.Forward, x mlx.Array, rp *transport.Reply) error {
	n := l.n
	if sh := x.Shape(); !x.Valid() || len(sh) != 3 || sh[1] != fw.Tokens || sh[2] != n.hidden {
		n.do(ctx, 0, "free", func() error { x.Free(); return nil })
		return fmt.Errorf("mlx-ring: forward of %d positions with a hidden state of shape %v; want [1 %d %d]", fw.Tokens, x.Shape(), fw.Tokens, n.hidden)
	}
	if (fw.Tokens-1)*n.pos > ringMaxLength {
		n.do(ctx, 0, "free", func() error { x.Free(); return nil })
		return fmt.Errorf("mlx-ring: forward of %d bytes, limit %d: %w", fw.Tokens*n.pos, ringMaxLength, transport.ErrTooLarge)
	}
	h := ringHeader{op: opForward, seq: uint32(seq), position: fw.Position, tokens: fw.Tokens, topK: fw.TopK,
		outputs: fw.Outputs, dtype: l.dtype, length: (fw.Tokens - 1) * n.pos}
	return l.roundTrip(ctx, seq, fw, rp, func() error {
		defer x.Free() // on the ring's thread, once sent
		return n.sendHidden(n.right(), h, x, fw.Tokens)
	})
}

// roundTrip sends a forward with send and waits for the last stage's answer.
func (l *ringLink) roundTrip(ctx context.Context, seq uint64, fw *transport.Forward, rp *transport.Reply, send func() error) error {
	n := l.n
	wait := transport.DefaultTimeout
	if fw.Tokens > 1 {
		wait = transport.DefaultPrefillTimeout
	}
	var got ringHeader
	var body, text []byte
	err := n.do(ctx, wait, "forward", func() error {
		if err := send(); err != nil {
			return err
		}
		var err error
		got, body, text, err = n.recvMessage(n.left(), n.reply(fw.Outputs, fw.TopK))
		if err != nil {
			return err
		}
		if got.op == opError {
			return remoteError{&transport.Error{Code: got.code, Message: string(text)}}
		}
		if got.op != opReply || got.seq != uint32(seq) || got.stage != n.stages-1 {
			return fmt.Errorf("forward seq %d answered by a %v of seq %d from stage %d: %w", uint32(seq), got.op, got.seq, got.stage, transport.ErrBadFrame)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.decodeReply(got, body, fw, rp)
}

func (l *ringLink) decodeReply(h ringHeader, body []byte, fw *transport.Forward, rp *transport.Reply) error {
	n := l.n
	if h.tokens > max(1, fw.Outputs) || h.topK > fw.TopK {
		return fmt.Errorf("mlx-ring: reply carries %d tokens and %d candidates for a forward that asked %d and %d: %w",
			h.tokens, h.topK, max(1, fw.Outputs), fw.TopK, transport.ErrBadFrame)
	}
	le := binary.LittleEndian
	p := body[n.header:]
	rp.Tokens, rp.TopK, rp.Timings = rp.Tokens[:0], rp.TopK[:0], rp.Timings[:0]
	for i := range h.tokens {
		rp.Tokens = append(rp.Tokens, int32(le.Uint32(p[4*i:])))
	}
	p = p[4*max(1, fw.Outputs):]
	for i := range h.topK {
		rp.TopK = append(rp.TopK, transport.Candidate{ID: int32(le.Uint32(p[8*i:])), Logit: math.Float32frombits(le.Uint32(p[8*i+4:]))})
	}
	for k := 1; k < n.stages; k++ {
		rp.AddTiming(k, h.forward[k])
	}
	return nil
}

// Close says goodbye (every stage then exits) and leaves the ring.
func (l *ringLink) Close() error {
	n := l.n
	if n.broken == nil {
		msg := n.message(n.slot(), ringHeader{op: opBye}, nil)
		n.do(context.Background(), time.Second, "bye", func() error { return n.send(n.right(), msg) })
	}
	n.close()
	return nil
}

// ServeRing serves r.Stage over MLX's ring: the process's environment holds MLX_RANK (the stage)
// and MLX_HOSTFILE, as Launch sets them. It returns nil when the driver says goodbye, and an
// error when the ring breaks (a stage or the driver died) or ctx ends. Unlike Serve, one ring
// serves one driver: a ring lives as long as its processes.
func (r *Rank) ServeRing(ctx context.Context) error {
	if r.Stage < 1 || r.Stage >= len(r.Plan.Split) {
		return fmt.Errorf("rank: stage %d: ranks serve stages 1 to %d (stage 0 is the driver)", r.Stage, len(r.Plan.Split)-1)
	}
	j, err := startRing(r.Plan, r.Stage, "")
	if err != nil {
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	st, err := engines.OpenStage(ctx, engines.StageOptions{Model: r.Plan.Model, DType: r.Plan.DType, Range: r.Plan.Split[r.Stage], DeviceHidden: true})
	if err != nil {
		j.abandon()
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	defer st.Close()
	n, err := j.node(ctx, r.Plan, st)
	if err != nil {
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	defer n.close()
	if r.Log != nil {
		r.Log.Printf("stage %d ready on the mlx ring: layers [%d,%d) of %s", r.Stage, st.Range().From, st.Range().To, r.Plan.Model)
	}
	s := ringStage{n: n, st: st, id: ringIdentity(r.Plan, st)}
	if err := n.do(ctx, 0, "hello", s.hello); err != nil {
		return fmt.Errorf("rank %d: %w", r.Stage, err)
	}
	for {
		var bye bool
		err := n.do(ctx, 0, "serve", func() error {
			var err error
			bye, err = s.step(ctx)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("rank %d: %w", r.Stage, err)
		}
		if bye {
			return nil
		}
	}
}

// ringStage is a rank's loop state; its methods run on the ring's worker.
type ringStage struct {
	n  *ringNode
	st *engines.Stage
	id []string
	// pending is a failed reset, reported in answer to the next forward.
	pending error
}

func (s *ringStage) last() bool { return s.n.stage == s.n.stages-1 }

// hello checks the driver's identity and passes it on; the last stage answers rank 0.
func (s *ringStage) hello() error {
	n := s.n
	h, msg, text, err := n.recvMessage(n.left(), n.header)
	if err != nil {
		return err
	}
	switch h.op {
	case opHello:
		if e := checkIdentity(n.stage, string(text), s.id); e != nil {
			n.sendMessage(n.right(), n.message(n.header, ringHeader{op: opError, stage: n.stage, code: e.Code, length: len(e.Message)}, nil), []byte(e.Message))
			return e
		}
		if s.last() {
			return n.send(n.right(), n.message(n.header, ringHeader{op: opHello, stage: n.stage}, nil))
		}
		return n.sendMessage(n.right(), msg, text)
	case opError: // an earlier stage refused the driver: pass it on and stop too
		n.sendMessage(n.right(), msg, text)
		return &transport.Error{Code: h.code, Message: string(text)}
	}
	return fmt.Errorf("expected hello, got %v: %w", h.op, transport.ErrBadFrame)
}

// step handles one message from the previous stage and reports whether it was the goodbye.
func (s *ringStage) step(ctx context.Context) (bye bool, err error) {
	n := s.n
	h, x, msg, cont, err := n.recvStep(n.left())
	if err != nil {
		return false, err
	}
	switch h.op {
	case opBye:
		if !s.last() {
			return true, n.send(n.right(), msg)
		}
		return true, nil
	case opReset:
		if err := s.st.Reset(ctx, h.position, 0, 1, 0); err != nil && s.pending == nil {
			s.pending = err
		}
		if !s.last() {
			return false, n.send(n.right(), msg)
		}
		return false, nil
	case opError:
		return false, s.fail(h, &transport.Error{Code: h.code, Message: string(cont)})
	case opForward:
		defer x.Free()
		return false, s.forward(ctx, h, x)
	}
	return false, fmt.Errorf("unexpected %v message from stage %d: %w", h.op, n.left(), transport.ErrBadFrame)
}

// forward runs the hidden state x (on the device, as recvStep left it) through the stage and
// passes the result on, or answers rank 0 from the last stage.
func (s *ringStage) forward(ctx context.Context, h ringHeader, x mlx.Array) error {
	n := s.n
	if s.pending != nil {
		err := s.pending
		s.pending = nil
		return s.fail(h, err)
	}
	if !x.Valid() || h.outputs > h.tokens {
		return s.fail(h, fmt.Errorf("forward of %d positions (%d outputs) with %d more bytes of dtype %d; want %d bytes per position of %v",
			h.tokens, h.outputs, h.length, h.dtype, n.pos, s.st.DType()))
	}
	in := engines.Activation{Array: x, Len: h.tokens}
	out := h
	out.stage = n.stage
	if s.last() && h.outputs > 1 {
		res, err := s.st.Verify(ctx, in, h.outputs)
		if err != nil {
			return s.fail(h, err)
		}
		tokens := make([]int32, len(res.Tokens))
		for i, id := range res.Tokens {
			tokens[i] = int32(id)
		}
		out.forward[n.stage] = res.Forward
		return s.reply(out, tokens, nil)
	}
	res, err := s.st.Forward(ctx, in, true, h.topK)
	if err != nil {
		return s.fail(h, err)
	}
	out.forward[n.stage] = res.Forward
	if s.last() {
		cands := make([]transport.Candidate, 0, len(res.TopK))
		for _, c := range res.TopK {
			cands = append(cands, transport.Candidate{ID: int32(c.ID), Logit: c.LogProb})
		}
		return s.reply(out, []int32{int32(res.Token)}, cands)
	}
	y := res.Hidden.Array
	defer y.Free()
	if sh := y.Shape(); !y.Valid() || len(sh) != 3 || sh[1] != h.tokens || sh[2] != n.hidden {
		return s.fail(h, fmt.Errorf("stage produced a hidden state of shape %v for %d positions", y.Shape(), h.tokens))
	}
	out.length = (h.tokens - 1) * n.pos
	return n.sendHidden(n.right(), out, y, h.tokens)
}

// reply sends the last stage's answer to rank 0, sized as the forward asked.
func (s *ringStage) reply(h ringHeader, tokens []int32, cands []transport.Candidate) error {
	n := s.n
	if len(cands) > h.topK {
		cands = cands[:h.topK]
	}
	size := n.reply(h.outputs, h.topK)
	outputs := max(1, h.outputs)
	b := make([]byte, 0, size-n.header)
	le := binary.LittleEndian
	for _, t := range tokens[:min(len(tokens), outputs)] {
		b = le.AppendUint32(b, uint32(t))
	}
	b = b[:4*outputs]
	for _, c := range cands {
		b = le.AppendUint32(b, uint32(c.ID))
		b = le.AppendUint32(b, math.Float32bits(c.Logit))
	}
	h.op, h.tokens, h.topK, h.length = opReply, min(len(tokens), outputs), len(cands), 0
	return n.send(n.right(), n.message(size, h, b))
}

// fail sends an error towards rank 0 in place of the answer to h: downstream as a slot, or, from
// the last stage, sized as the reply rank 0 waits for. An error that arrived from an earlier
// stage keeps its text.
func (s *ringStage) fail(h ringHeader, err error) error {
	n := s.n
	out := ringHeader{op: opError, seq: h.seq, topK: h.topK, outputs: h.outputs, stage: n.stage}
	var te *transport.Error
	if h.op == opError { // passing on an earlier stage's failure
		errors.As(err, &te)
		out.stage = h.stage
	} else {
		te = &transport.Error{Message: fmt.Sprintf("stage %d: %v", n.stage, err)}
		var cause *transport.Error
		if errors.As(err, &cause) {
			te.Code = cause.Code
		}
	}
	text := []byte(te.Message)
	out.code, out.length = te.Code, len(text)
	size := n.slot()
	if s.last() {
		size = n.reply(h.outputs, h.topK)
	}
	return n.sendMessage(n.right(), n.message(size, out, nil), text)
}

// WriteHostfile writes MLX's ring hostfile for stages ranks on free loopback ports and returns its
// path; the caller removes it.
func WriteHostfile(stages int) (string, error) {
	hosts := make([][]string, stages)
	for k := range hosts {
		a, err := freePort()
		if err != nil {
			return "", err
		}
		hosts[k] = []string{a}
	}
	b, err := json.Marshal(hosts)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "hippo-ring-*.json")
	if err != nil {
		return "", fmt.Errorf("mlx-ring: hostfile: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("mlx-ring: hostfile: %w", err)
	}
	return f.Name(), nil
}
