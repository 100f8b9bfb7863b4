package pipeline

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/transport"
)

func TestRingHeaderRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		h    ringHeader
	}{
		{"decode forward", ringHeader{op: opForward, seq: 7, position: 40, tokens: 1, topK: 64, dtype: 7, stage: 1,
			forward: []time.Duration{0, 3 * time.Millisecond, 0}}},
		{"prefill forward", ringHeader{op: opForward, seq: 1 << 31, tokens: 128, length: 127 * 4096, forward: make([]time.Duration, 3)}},
		{"reply", ringHeader{op: opReply, seq: 9, tokens: 1, topK: 3, stage: 2,
			forward: []time.Duration{0, time.Millisecond, 2 * time.Second}}},
		{"error", ringHeader{op: opError, stage: 2, length: 12, code: transport.CodeModel, forward: make([]time.Duration, 3)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, ringHeaderSize(3)+5)
			tc.h.put(b)
			got, err := parseRingHeader(b, 3)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.h, got, cmp.AllowUnexported(ringHeader{})); diff != "" {
				t.Errorf("parse(put(h)) differs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRingHeaderRejects(t *testing.T) {
	good := func() []byte {
		b := make([]byte, ringHeaderSize(2))
		(&ringHeader{op: opForward, tokens: 1, forward: make([]time.Duration, 2)}).put(b)
		return b
	}
	word := func(i int, v uint32) []byte {
		b := good()
		binary.LittleEndian.PutUint32(b[4*i:], v)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", good()[:20], "shorter than"},
		{"magic", word(0, 0x48495050), "magic"},
		{"unknown op", word(1, 99), "unknown op"},
		{"negative tokens", word(4, 0xFFFFFFFF), "out-of-range"},
		{"stage beyond the ring", word(8, 2), "out-of-range"},
		{"negative length", word(9, 0x80000000), "out-of-range"},
		{"reserved", word(11, 1), "reserved"},
		{"negative forward time", func() []byte {
			b := good()
			binary.LittleEndian.PutUint64(b[4*ringWords+8:], 1<<63)
			return b
		}(), "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRingHeader(tc.b, 2)
			if err == nil || !errors.Is(err, transport.ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseRingHeader = %v; want a bad-frame error mentioning %q", err, tc.want)
			}
		})
	}
}

// FuzzRingHeader: any bytes parse to a header or an error, never a panic.
func FuzzRingHeader(f *testing.F) {
	b := make([]byte, ringHeaderSize(2))
	(&ringHeader{op: opReply, tokens: 1, forward: make([]time.Duration, 2)}).put(b)
	f.Add(b, 2)
	f.Add([]byte("HPR1"), 1)
	f.Fuzz(func(t *testing.T, b []byte, stages int) {
		if stages < 1 || stages > 64 {
			return
		}
		h, err := parseRingHeader(b, stages)
		if err == nil && (len(h.forward) != stages || h.op <= 0 || h.op >= opEnd) {
			t.Fatalf("parseRingHeader accepted %+v", h)
		}
	})
}

func TestRingSizes(t *testing.T) {
	s := ringSizes{stages: 2, header: ringHeaderSize(2), pos: 2560 * 2}
	if got, want := s.header, 64; got != want {
		t.Errorf("header of a 2-stage ring = %d bytes; want %d", got, want)
	}
	if got, want := s.slot(), 64+5120; got != want {
		t.Errorf("slot = %d; want %d", got, want)
	}
	for _, tc := range []struct{ outputs, topK, want int }{{0, 0, 68}, {1, 0, 68}, {5, 0, 84}, {1, 64, 68 + 512}} {
		if got := s.reply(tc.outputs, tc.topK); got != tc.want {
			t.Errorf("reply(%d outputs, top-%d) = %d bytes; want %d", tc.outputs, tc.topK, got, tc.want)
		}
	}
}

func TestCheckIdentity(t *testing.T) {
	ours := []string{"model=abc", "layers=4", "split=0:2,2:4", "dtype=float32", "hidden=64", "secret=-"}
	join := func(kv ...string) string { return strings.Join(kv, "\n") }
	cases := []struct {
		name   string
		theirs string
		code   transport.Code
		want   string
	}{
		{"same", join(ours...), 0, ""},
		{"other checkpoint", join(append([]string{"model=xyz"}, ours[1:]...)...), transport.CodeModel, "same checkpoint"},
		{"other split", join("model=abc", "layers=4", "split=0:1,1:4", "dtype=float32", "hidden=64", "secret=-"), transport.CodeRange, "split is 0:2,2:4 here but 0:1,1:4"},
		{"other secret", join("model=abc", "layers=4", "split=0:2,2:4", "dtype=float32", "hidden=64", "secret=1234"), transport.CodeAuth, "--secret-file"},
		{"truncated", "model=abc", transport.CodeRange, "(missing)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkIdentity(1, tc.theirs, ours)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("checkIdentity = %v; want nil", err)
				}
				return
			}
			if err == nil || err.Code != tc.code || !strings.Contains(err.Message, tc.want) {
				t.Errorf("checkIdentity = %+v; want code %d and %q", err, tc.code, tc.want)
			}
		})
	}
}

func TestStartRingChecksEnvironment(t *testing.T) {
	plan := Plan{Split: []model.Range{{From: 0, To: 2}, {From: 2, To: 4}}}
	hf := filepath.Join(t.TempDir(), "hosts.json")
	if err := os.WriteFile(hf, []byte(`[["127.0.0.1:1"],["127.0.0.1:2"],["127.0.0.1:3"]]`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MLX_HOSTFILE", hf)
	t.Setenv("MLX_RANK", "2")
	if _, err := startRing(plan, 1, ""); err == nil || !strings.Contains(err.Error(), "MLX_RANK") {
		t.Errorf("startRing as stage 1 with MLX_RANK=2 = %v; want an error naming MLX_RANK", err)
	}
	t.Setenv("MLX_RANK", "1")
	if _, err := startRing(plan, 1, ""); err == nil || !strings.Contains(err.Error(), "3 ranks but the split has 2 stages") {
		t.Errorf("startRing with a 3-rank hostfile for 2 stages = %v; want a count mismatch", err)
	}
	t.Setenv("MLX_HOSTFILE", "")
	if _, err := startRing(plan, 1, ""); err == nil || !strings.Contains(err.Error(), "MLX_HOSTFILE") {
		t.Errorf("startRing with no hostfile = %v; want an error naming MLX_HOSTFILE", err)
	}
}
