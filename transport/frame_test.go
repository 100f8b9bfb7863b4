package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// bf16Hidden returns a [tokens, hidden] bf16 tensor with a recognisable byte pattern.
func bf16Hidden(tokens, hidden int) *Forward {
	data := make([]byte, tokens*hidden*2)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	return &Forward{Position: 17, Tokens: tokens, DType: BFloat16, Shape: []int{tokens, hidden}, Data: data}
}

// sampleMessages has one or more instances of every message type.
func sampleMessages() []struct {
	name string
	msg  Message
} {
	id := Identity{Model: "sha256:abc123", TotalLayers: 28, DType: BFloat16, Stage: 1, Start: 14, End: 28}
	var nonce, tag [32]byte
	for i := range nonce {
		nonce[i], tag[i] = byte(i), byte(255-i)
	}
	return []struct {
		name string
		msg  Message
	}{
		{"hello", &Hello{Secret: true, Nonce: nonce}},
		{"hello without secret", &Hello{}},
		{"hello-ack", &HelloAck{Secret: true, Nonce: tag}},
		{"auth from the driver", &Auth{Stage: 0, Identity: id}},
		{"auth without identity", &Auth{Stage: 3}},
		{"reset to zero", &Reset{}},
		{"reset trims", &Reset{Position: 4096}},
		{"forward decode step bf16", bf16Hidden(1, 2560)},
		{"forward prefill chunk bf16", bf16Hidden(64, 256)},
		{"forward f32 top-k", &Forward{Position: 0, Tokens: 2, TopK: 5, DType: Float32, Shape: []int{1, 2, 3}, Data: make([]byte, 24)}},
		{"forward f16", &Forward{Tokens: 1, DType: Float16, Shape: []int{4}, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}},
		{"forward sampled verify", &Forward{Position: 3, Tokens: 3, Outputs: 3, DType: Float32, Shape: []int{3, 1}, Data: make([]byte, 12),
			Sample: &Sampling{Temperature: 0.7, Seed: math.MaxUint64, Drafts: []int{4, 151935}, Proposals: [][]Prob{{{ID: 4, P: 0.5}, {ID: 9, P: 0.5}}, {{ID: 151935, P: 1}}}}}},
		{"forward sampled first token", &Forward{Tokens: 2, Outputs: 1, DType: Float32, Shape: []int{2, 1}, Data: make([]byte, 8), Sample: &Sampling{Temperature: 1, Seed: 7}}},
		{"forward sampled deterministic drafts", &Forward{Tokens: 2, Outputs: 2, DType: Float32, Shape: []int{2, 1}, Data: make([]byte, 8), Sample: &Sampling{Temperature: 2, Drafts: []int{0}}}},
		{"forward verify with taps", &Forward{Position: 9, Tokens: 2, Outputs: 2, Taps: []int{27, 1, 65535}, DType: BFloat16, Shape: []int{2, 1}, Data: []byte{1, 2, 3, 4}}},
		{"reply token", &Reply{Tokens: []int32{151643}, Timings: []StageTiming{{Stage: 1, Forward: 41 * time.Millisecond}}}},
		{"reply top-k and hops", &Reply{
			TopK:    []Candidate{{ID: 7, Logit: 3.5}, {ID: 0, Logit: float32(math.Inf(-1))}, {ID: 9, Logit: -0.25}},
			Timings: []StageTiming{{Stage: 2, Forward: 30 * time.Millisecond}, {Stage: 1, Forward: 29 * time.Millisecond, Network: 170 * time.Microsecond}, {Stage: 0, Forward: time.Microsecond, Network: time.Millisecond}},
		}},
		{"reply empty", &Reply{}},
		{"reply with features", &Reply{Tokens: []int32{5, 6}, Timings: []StageTiming{{Stage: 1}}, Features: []Feature{
			{Layer: 20, DType: BFloat16, Rows: 2, Cols: 3, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
			{Layer: 27, DType: Float32, Rows: 1, Cols: 1, Data: []byte{0, 0, 128, 63}},
			{Layer: 3, DType: Float16, Rows: 0, Cols: 4},
		}}},
		{"error", &Error{Code: CodeModel, Message: "stage 1 runs model abc, driver has def"}},
		{"error unknown code", &Error{Code: 999, Message: ""}},
		{"bye", &Bye{Reason: "done"}},
		{"ping", &Ping{Token: math.MaxUint64}},
		{"pong", &Pong{Token: 42}},
		{"survey", &Survey{}},
		{"memory of three stages", &Memory{Stages: []StageMemory{{Stage: 3, Free: 12 << 30}, {Stage: 2, Free: 1}, {Stage: 1, Free: MaxFreeMemory}}}},
		{"memory empty", &Memory{}},
		{"assign", &Assign{Split: []Range{{0, 3}, {3, 20}, {20, 28}}}},
		{"auth unassigned range", &Auth{Stage: 1, Identity: Identity{Model: "m", TotalLayers: 28, DType: Float32, Stage: 2}}},
	}
}

// emptySlicesEqual treats nil and empty slices alike: a decoded message reuses slices.
var emptySlicesEqual = cmp.FilterValues(func(x, y any) bool {
	return isEmptySlice(x) && isEmptySlice(y)
}, cmp.Comparer(func(_, _ any) bool { return true }))

func isEmptySlice(v any) bool {
	switch s := v.(type) {
	case []int32:
		return len(s) == 0
	case []Candidate:
		return len(s) == 0
	case []StageTiming:
		return len(s) == 0
	case []StageMemory:
		return len(s) == 0
	case []Range:
		return len(s) == 0
	case []Feature:
		return len(s) == 0
	case []int:
		return len(s) == 0
	case [][]Prob:
		return len(s) == 0
	case []byte:
		return len(s) == 0
	}
	return false
}

func TestFrameRoundTrip(t *testing.T) {
	for i, tc := range sampleMessages() {
		t.Run(tc.name, func(t *testing.T) {
			payload, err := Marshal(tc.msg)
			if err != nil {
				t.Fatalf("Marshal(%T) = %v", tc.msg, err)
			}
			want := Frame{Type: tc.msg.Type(), Session: uint64(i) << 40, Seq: uint64(i) + 1, Payload: payload}
			var buf bytes.Buffer
			if err := WriteFrame(&buf, want); err != nil {
				t.Fatalf("WriteFrame = %v", err)
			}
			if got := buf.Len(); got != HeaderSize+len(payload) {
				t.Errorf("frame is %d bytes; want %d", got, HeaderSize+len(payload))
			}
			got, err := ReadFrame(&buf, 0)
			if err != nil {
				t.Fatalf("ReadFrame = %v", err)
			}
			if diff := cmp.Diff(want, got, cmp.Comparer(bytes.Equal)); diff != "" {
				t.Errorf("ReadFrame mismatch (-want +got):\n%s", diff)
			}
			m, err := DecodeMessage(got)
			if err != nil {
				t.Fatalf("DecodeMessage = %v", err)
			}
			if diff := cmp.Diff(tc.msg, m, emptySlicesEqual); diff != "" {
				t.Errorf("decoded message mismatch (-want +got):\n%s", diff)
			}
			if _, err := ReadFrame(&buf, 0); err != io.EOF {
				t.Errorf("ReadFrame at end = %v; want io.EOF", err)
			}
		})
	}
}

func TestForwardKeepsNativeDType(t *testing.T) {
	for _, tc := range []struct {
		name   string
		dtype  DType
		shape  []int
		nbytes int
	}{
		{name: "bf16 decode step", dtype: BFloat16, shape: []int{1, 2560}, nbytes: 5120},
		{name: "f16 prefill", dtype: Float16, shape: []int{128, 3840}, nbytes: 128 * 3840 * 2},
		{name: "f32", dtype: Float32, shape: []int{1, 1024}, nbytes: 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fw := &Forward{Tokens: tc.shape[0], DType: tc.dtype, Shape: tc.shape, Data: make([]byte, tc.nbytes)}
			payload, err := Marshal(fw)
			if err != nil {
				t.Fatal(err)
			}
			// position, tokens, top-k, outputs, tap count, has-sampling, dtype, ndim, dims, then
			// the raw bytes: nothing widened.
			if got, want := len(payload), 4+4+2+2+1+1+1+1+4*len(tc.shape)+tc.nbytes; got != want {
				t.Errorf("payload is %d bytes; want %d", got, want)
			}
		})
	}
}

// frameBytes builds raw frame bytes with a hand-made header.
func frameBytes(magicStr string, version, typ byte, flags uint16, length uint32, payload []byte) []byte {
	b := []byte(magicStr)
	b = append(b, version, typ)
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = binary.LittleEndian.AppendUint64(b, 1)
	b = binary.LittleEndian.AppendUint64(b, 2)
	b = binary.LittleEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func TestReadFrameRejectsCorruptFrames(t *testing.T) {
	ping := binary.LittleEndian.AppendUint64(nil, 9)
	for _, tc := range []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{name: "bad magic", in: frameBytes("HTTP", Version, byte(TypePing), 0, 8, ping), want: ErrBadFrame},
		{name: "http request", in: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want: ErrBadFrame},
		{name: "type zero", in: frameBytes("HIPO", Version, 0, 0, 8, ping), want: ErrBadFrame},
		{name: "unknown type", in: frameBytes("HIPO", Version, 200, 0, 8, ping), want: ErrBadFrame},
		{name: "reserved flags", in: frameBytes("HIPO", Version, byte(TypePing), 0x8000, 8, ping), want: ErrBadFrame},
		{name: "newer version", in: frameBytes("HIPO", Version+1, byte(TypePing), 0, 8, ping), want: ErrVersion},
		{name: "version zero", in: frameBytes("HIPO", 0, byte(TypePing), 0, 8, ping), want: ErrVersion},
		{name: "length over limit", in: frameBytes("HIPO", Version, byte(TypeForward), 0, 1<<20+1, nil), max: 1 << 20, want: ErrTooLarge},
		{name: "length over default limit", in: frameBytes("HIPO", Version, byte(TypeForward), 0, math.MaxUint32, nil), want: ErrTooLarge},
		{name: "truncated header", in: frameBytes("HIPO", Version, byte(TypePing), 0, 8, nil)[:13], want: ErrBadFrame},
		{name: "truncated payload", in: frameBytes("HIPO", Version, byte(TypePing), 0, 8, ping[:3]), want: io.ErrUnexpectedEOF},
		{name: "payload missing", in: frameBytes("HIPO", Version, byte(TypeForward), 0, 5000, nil), want: ErrBadFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tc.in), tc.max)
			if !errors.Is(err, tc.want) {
				t.Errorf("ReadFrame(%q) = %v; want %v", tc.in, err, tc.want)
			}
		})
	}
}

// TestReadFrameForgedLengthAllocatesLittle sends a header that claims a 60 MiB payload (under
// the limit) followed by 100 bytes: the reader must not allocate the 60 MiB up front.
func TestReadFrameForgedLengthAllocatesLittle(t *testing.T) {
	in := frameBytes("HIPO", Version, byte(TypeForward), 0, 60<<20, make([]byte, 100))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(bytes.NewReader(in), 0)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame = %v; want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("ReadFrame of a forged 60 MiB frame allocated %d bytes; want at most %d", got, 4<<20)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	validForward, err := Marshal(bf16Hidden(1, 4))
	if err != nil {
		t.Fatal(err)
	}
	forward := func(edit func(b []byte) []byte) []byte {
		return edit(append([]byte(nil), validForward...))
	}
	// A sampled verify of one draft: temperature at byte 14, seed 18, draft count 26, draft 28,
	// has-proposals 32, the proposal's entry count 33, its token 37 and probability 41.
	validSampled, err := Marshal(&Forward{Tokens: 2, Outputs: 2, DType: BFloat16, Shape: []int{2, 4}, Data: make([]byte, 16),
		Sample: &Sampling{Temperature: 1, Drafts: []int{5}, Proposals: [][]Prob{{{ID: 5, P: 1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	sampled := func(edit func(b []byte) []byte) []byte {
		return edit(append([]byte(nil), validSampled...))
	}
	validAuth, err := Marshal(&Auth{Identity: Identity{Model: "m", TotalLayers: 4, Start: 0, End: 4}})
	if err != nil {
		t.Fatal(err)
	}
	u32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		typ     Type
		payload []byte
	}{
		{name: "ping short", typ: TypePing, payload: []byte{1, 2, 3}},
		{name: "ping trailing", typ: TypePing, payload: make([]byte, 9)},
		{name: "auth short", typ: TypeAuth, payload: make([]byte, 3)},
		{name: "reset negative", typ: TypeReset, payload: u32(math.MaxUint32)},
		{name: "hello empty", typ: TypeHello, payload: nil},
		{name: "hello secret flag 2", typ: TypeHello, payload: append([]byte{2}, make([]byte, 32)...)},
		{name: "hello short nonce", typ: TypeHello, payload: make([]byte, 32)},
		{name: "hello-ack trailing", typ: TypeHelloAck, payload: make([]byte, 34)},
		{name: "auth range outside model", typ: TypeAuth, payload: func() []byte {
			b := append([]byte(nil), validAuth...)
			binary.LittleEndian.PutUint32(b[2+2+1+4+1+2+4:], 9) // end = 9 > 4 layers
			return b
		}()},
		{name: "auth model length past end", typ: TypeAuth, payload: []byte{0, 0, 0xff, 0xff, 'm'}},
		{name: "forward more outputs than tokens", typ: TypeForward, payload: forward(func(b []byte) []byte { copy(b[10:], []byte{99, 0}); return b })},
		{name: "forward zero tokens", typ: TypeForward, payload: forward(func(b []byte) []byte { copy(b[4:], u32(0)); return b })},
		{name: "forward tokens overflow", typ: TypeForward, payload: forward(func(b []byte) []byte { copy(b[4:], u32(math.MaxUint32)); return b })},
		{name: "forward unknown dtype", typ: TypeForward, payload: forward(func(b []byte) []byte { b[14] = 9; return b })},
		{name: "forward dtype zero", typ: TypeForward, payload: forward(func(b []byte) []byte { b[14] = 0; return b })},
		{name: "forward rank zero", typ: TypeForward, payload: forward(func(b []byte) []byte { b[15] = 0; return b })},
		{name: "forward rank nine", typ: TypeForward, payload: forward(func(b []byte) []byte { b[15] = 9; return b })},
		{name: "forward sampling flag 2", typ: TypeForward, payload: forward(func(b []byte) []byte { b[13] = 2; return b })},
		{name: "forward sampling cut short", typ: TypeForward, payload: forward(func(b []byte) []byte { b[13] = 1; return b })},
		{name: "forward sampling at temperature 0", typ: TypeForward, payload: sampled(func(b []byte) []byte { copy(b[14:], u32(0)); return b })},
		{name: "forward sampling at NaN", typ: TypeForward, payload: sampled(func(b []byte) []byte { copy(b[14:], u32(0x7fc00000)); return b })},
		{name: "forward sampling drafts do not match outputs", typ: TypeForward, payload: sampled(func(b []byte) []byte { b[26] = 3; return b })},
		{name: "forward sampling proposal count past end", typ: TypeForward, payload: sampled(func(b []byte) []byte { copy(b[33:], u32(1<<30)); return b })},
		{name: "forward sampling negative probability", typ: TypeForward, payload: sampled(func(b []byte) []byte { copy(b[41:], u32(0xbf800000)); return b })},
		{name: "forward sampling proposals flag 2", typ: TypeForward, payload: sampled(func(b []byte) []byte { b[32] = 2; return b })},
		{name: "forward too many taps", typ: TypeForward, payload: forward(func(b []byte) []byte {
			b[12] = MaxTaps + 1
			return append(b[:13:13], append(make([]byte, 2*(MaxTaps+1)), b[13:]...)...)
		})},
		{name: "forward tap count past end", typ: TypeForward, payload: forward(func(b []byte) []byte { b[12] = 200; return b[:14] })},
		{name: "forward layer tapped twice", typ: TypeForward, payload: forward(func(b []byte) []byte {
			b[12] = 2
			return append(b[:13:13], append([]byte{3, 0, 3, 0}, b[13:]...)...)
		})},
		{name: "forward data short", typ: TypeForward, payload: forward(func(b []byte) []byte { return b[:len(b)-1] })},
		{name: "forward data long", typ: TypeForward, payload: forward(func(b []byte) []byte { return append(b, 0) })},
		{name: "forward huge shape", typ: TypeForward, payload: forward(func(b []byte) []byte {
			copy(b[14:], u32(math.MaxInt32, math.MaxInt32))
			return b
		})},
		{name: "reply token count past end", typ: TypeReply, payload: u32(1 << 30)},
		{name: "reply token id negative", typ: TypeReply, payload: append(u32(1, 0x80000000, 0), 0, 0)},
		{name: "reply candidates past end", typ: TypeReply, payload: u32(0, 5, 1, 2)},
		{name: "reply timings past end", typ: TypeReply, payload: append(u32(0, 0), 0xff, 0xff)},
		{name: "reply timing overflows", typ: TypeReply, payload: append(append(u32(0, 0), 1, 0, 0, 0), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)},
		{name: "reply missing timings", typ: TypeReply, payload: u32(0, 0)},
		{name: "reply missing feature count", typ: TypeReply, payload: append(u32(0, 0), 0, 0)},
		{name: "reply too many features", typ: TypeReply, payload: append(u32(0, 0), 0, 0, MaxTaps+1)},
		{name: "reply feature past end", typ: TypeReply, payload: append(append(u32(0, 0), 0, 0, 1, 3, 0, byte(Float32)), u32(2, 4)...)},
		{name: "reply feature unknown dtype", typ: TypeReply, payload: append(append(u32(0, 0), 0, 0, 1, 3, 0, 9), u32(0, 0)...)},
		{name: "reply feature huge", typ: TypeReply, payload: append(append(u32(0, 0), 0, 0, 1, 3, 0, byte(BFloat16)), u32(math.MaxInt32, math.MaxInt32)...)},
		{name: "reply feature rows overflow", typ: TypeReply, payload: append(append(u32(0, 0), 0, 0, 1, 3, 0, byte(BFloat16)), u32(math.MaxUint32, 1)...)},
		{name: "reply feature trailing", typ: TypeReply, payload: append(append(u32(0, 0), 0, 0, 1, 3, 0, byte(BFloat16)), append(u32(1, 1), 0, 0, 0)...)},
		{name: "error message past end", typ: TypeError, payload: []byte{0, 0, 10, 0, 'x'}},
		{name: "bye trailing", typ: TypeBye, payload: []byte{0, 0, 'x'}},
		{name: "survey trailing", typ: TypeSurvey, payload: []byte{0}},
		{name: "memory count past end", typ: TypeMemory, payload: []byte{0xff, 0x00}},
		{name: "memory count over limit", typ: TypeMemory, payload: append([]byte{0xff, 0xff}, make([]byte, 65535*10)...)},
		{name: "memory free overflows", typ: TypeMemory, payload: []byte{1, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{name: "memory trailing", typ: TypeMemory, payload: []byte{0, 0, 1}},
		{name: "assign count past end", typ: TypeAssign, payload: []byte{3, 0, 0, 0, 0, 0, 1, 0, 0, 0}},
		{name: "assign negative layer", typ: TypeAssign, payload: append([]byte{1, 0}, u32(0, math.MaxUint32)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMessage(Frame{Type: tc.typ, Payload: tc.payload})
			if !errors.Is(err, ErrBadFrame) {
				t.Errorf("DecodeMessage(%s, %x) = %v; want ErrBadFrame", tc.typ, tc.payload, err)
			}
		})
	}
}

func TestEncodeRejectsInvalidMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  Message
		want error
	}{
		{name: "forward data does not match shape", msg: &Forward{Tokens: 1, DType: BFloat16, Shape: []int{1, 4}, Data: make([]byte, 4)}, want: ErrBadFrame},
		{name: "forward zero tokens", msg: &Forward{DType: BFloat16, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "forward no dtype", msg: &Forward{Tokens: 1, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "forward negative dim", msg: &Forward{Tokens: 1, DType: BFloat16, Shape: []int{-1}}, want: ErrBadFrame},
		{name: "reset negative", msg: &Reset{Position: -1}, want: ErrBadFrame},
		{name: "reply negative token", msg: &Reply{Tokens: []int32{-1}}, want: ErrBadFrame},
		{name: "reply negative time", msg: &Reply{Timings: []StageTiming{{Stage: 1, Forward: -1}}}, want: ErrBadFrame},
		{name: "reply negative network time", msg: &Reply{Timings: []StageTiming{{Stage: 1, Network: -1}}}, want: ErrBadFrame},
		{name: "reply feature data does not match", msg: &Reply{Features: []Feature{{Layer: 1, DType: BFloat16, Rows: 1, Cols: 2, Data: make([]byte, 2)}}}, want: ErrBadFrame},
		{name: "reply feature no dtype", msg: &Reply{Features: []Feature{{Layer: 1, Rows: 1, Cols: 1, Data: make([]byte, 2)}}}, want: ErrBadFrame},
		{name: "reply too many features", msg: &Reply{Features: make([]Feature, MaxTaps+1)}, want: ErrBadFrame},
		{name: "forward sampling without temperature", msg: &Forward{Tokens: 1, Sample: &Sampling{}, DType: BFloat16, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "forward sampling drafts beyond outputs", msg: &Forward{Tokens: 2, Outputs: 2, Sample: &Sampling{Temperature: 1, Drafts: []int{1, 2}}, DType: BFloat16, Shape: []int{2}, Data: make([]byte, 4)}, want: ErrBadFrame},
		{name: "forward sampling infinite probability", msg: &Forward{Tokens: 2, Outputs: 2, Sample: &Sampling{Temperature: 1, Drafts: []int{1}, Proposals: [][]Prob{{{ID: 1, P: float32(math.Inf(1))}}}}, DType: BFloat16, Shape: []int{2}, Data: make([]byte, 4)}, want: ErrBadFrame},
		{name: "forward layer tapped twice", msg: &Forward{Tokens: 1, Taps: []int{2, 2}, DType: BFloat16, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "forward negative tap", msg: &Forward{Tokens: 1, Taps: []int{-1}, DType: BFloat16, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "forward too many taps", msg: &Forward{Tokens: 1, Taps: make([]int, MaxTaps+1), DType: BFloat16, Shape: []int{1}, Data: make([]byte, 2)}, want: ErrBadFrame},
		{name: "auth bad range", msg: &Auth{Identity: Identity{TotalLayers: 4, Start: 3, End: 2}}, want: ErrRange},
		{name: "memory negative", msg: &Memory{Stages: []StageMemory{{Stage: 1, Free: -1}}}, want: ErrBadFrame},
		{name: "memory too many stages", msg: &Memory{Stages: make([]StageMemory, MaxStages+1)}, want: ErrBadFrame},
		{name: "assign negative layer", msg: &Assign{Split: []Range{{-1, 2}}}, want: ErrBadFrame},
		{name: "assign too many stages", msg: &Assign{Split: make([]Range, MaxStages+1)}, want: ErrBadFrame},
		{name: "auth model id too long", msg: &Auth{Identity: Identity{Model: string(make([]byte, 70000))}}, want: ErrBadFrame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Marshal(tc.msg); !errors.Is(err, tc.want) {
				t.Errorf("Marshal(%+v) = %v; want %v", tc.msg, err, tc.want)
			}
		})
	}
}

func TestErrorUnwrapsToSentinel(t *testing.T) {
	for _, tc := range []struct {
		code Code
		want error
	}{
		{CodeVersion, ErrVersion}, {CodeModel, ErrModelMismatch}, {CodeAuth, ErrAuth},
		{CodeRange, ErrRange}, {CodeBadFrame, ErrBadFrame}, {CodeTooLarge, ErrTooLarge},
	} {
		t.Run(tc.want.Error(), func(t *testing.T) {
			err := error(&Error{Code: tc.code, Message: "x"})
			if !errors.Is(err, tc.want) {
				t.Errorf("errors.Is(Error{Code: %d}, %v) = false; want true", tc.code, tc.want)
			}
			if got := codeOf(tc.want); got != tc.code {
				t.Errorf("codeOf(%v) = %d; want %d", tc.want, got, tc.code)
			}
		})
	}
	if err := (&Error{Code: 999}).Unwrap(); err != nil {
		t.Errorf("Error{Code: 999}.Unwrap() = %v; want nil", err)
	}
}

// TestReaderSteadyStateAllocatesNothing checks the hot path: reading a decode step's frame
// and decoding it into a reused Forward allocates nothing.
func TestReaderSteadyStateAllocatesNothing(t *testing.T) {
	var buf bytes.Buffer
	payload, err := Marshal(bf16Hidden(1, 2560))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, Frame{Type: TypeForward, Payload: payload}); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	src := bytes.NewReader(data)
	r := NewReader(src, 0)
	var fw Forward
	step := func() {
		src.Reset(data)
		f, err := r.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Decode(&fw); err != nil {
			t.Fatal(err)
		}
	}
	step() // grow the buffers
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("ReadFrame + Decode allocated %v times per frame; want 0", allocs)
	}
}

func TestDecodeChecksType(t *testing.T) {
	f := Frame{Type: TypePing, Payload: make([]byte, 8)}
	if err := f.Decode(&Pong{}); !errors.Is(err, ErrBadFrame) {
		t.Errorf("Decode(ping frame into Pong) = %v; want ErrBadFrame", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, tc := range sampleMessages() {
		payload, err := Marshal(tc.msg)
		if err != nil {
			f.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteFrame(&buf, Frame{Type: tc.msg.Type(), Session: 3, Seq: 4, Payload: payload}); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{})
	f.Add([]byte("HIPO"))
	f.Add(frameBytes("HIPO", Version, byte(TypeForward), 0, 1<<30, nil))
	f.Add(frameBytes("HIPO", Version, byte(TypeReply), 0, 4, []byte{0xff, 0xff, 0xff, 0x7f}))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := ReadFrame(bytes.NewReader(data), 1<<20)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrVersion) && err != io.EOF {
				t.Fatalf("ReadFrame error %v is not classified", err)
			}
			return
		}
		m, err := DecodeMessage(fr)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("DecodeMessage error %v does not wrap ErrBadFrame", err)
			}
			return
		}
		// Encoding is canonical: what decodes re-encodes to the same bytes.
		again, err := Marshal(m)
		if err != nil {
			t.Fatalf("Marshal(decoded %T) = %v", m, err)
		}
		if !bytes.Equal(again, fr.Payload) {
			t.Fatalf("re-encoded %s payload differs:\n got %x\nwant %x", fr.Type, again, fr.Payload)
		}
	})
}
