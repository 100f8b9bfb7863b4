package mlx

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary act as rank 1 of TestRingSendRecv's group (MLX's ring needs one
// process per rank: a process holds one group and the backend reads its rank from the environment).
const helperEnv = "HIPPO_MLX_RING_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		run := ringEcho
		if mode == "bench" {
			run = ringBenchPeer
		}
		if err := run(); err != nil {
			fmt.Fprintln(os.Stderr, "ring helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// ringEcho joins the group from the environment, receives two arrays from rank 0 and sends back
// the first plus one and the second unchanged, then exits without a word (so rank 0 sees a peer
// that is gone).
func ringEcho() error {
	g, err := NewGroup(GroupOptions{})
	if err != nil {
		return err
	}
	w := NewWorker()
	defer w.Close()
	return w.Do(context.Background(), func() error {
		s := NewScope()
		defer s.Close()
		// One receive per Eval: MLX does not order independent ops within one Eval, and the
		// ring is a byte stream.
		x := g.Recv(Float32, 0, 2, 3)
		if err := Eval(x); err != nil {
			return err
		}
		y := g.Recv(BFloat16, 0, 4)
		if err := Eval(y); err != nil {
			return err
		}
		if err := Eval(g.Send(Add(x, Scalar(1, Float32)), 0)); err != nil {
			return err
		}
		return Eval(g.Send(y, 0))
	})
}

func hostfile(t testing.TB, n int) string {
	t.Helper()
	var hosts [][]string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, []string{ln.Addr().String()})
		ln.Close()
	}
	b, err := json.Marshal(hosts)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "hosts.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRingSendRecv: arrays of several dtypes cross MLX's ring between two processes unchanged,
// and a receive from a peer that has exited fails instead of hanging.
func TestRingSendRecv(t *testing.T) {
	hf := hostfile(t, 2)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "MLX_RANK=1", "MLX_HOSTFILE="+hf)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	g, err := NewGroup(GroupOptions{Hostfile: hf, Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free()
	if g.Rank() != 0 || g.Size() != 2 {
		t.Fatalf("group rank %d of %d; want 0 of 2", g.Rank(), g.Size())
	}
	onWorker(t, func() error {
		s := NewScope()
		defer s.Close()
		x := FromFloat32s([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
		y := AsType(FromFloat32s([]float32{0.5, -1, 3, 1e4}, 4), BFloat16)
		if err := Eval(g.Send(x, 1)); err != nil {
			return err
		}
		if err := Eval(g.Send(y, 1)); err != nil {
			return err
		}
		got, err := g.Recv(Float32, 1, 2, 3).Float32s()
		if err != nil {
			return err
		}
		if want := []float32{2, 3, 4, 5, 6, 7}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("echo of x+1 = %v; want %v", got, want)
		}
		gy, err := AsType(g.Recv(BFloat16, 1, 4), Float32).Float32s()
		if err != nil {
			return err
		}
		wy, err := AsType(y, Float32).Float32s()
		if err != nil {
			return err
		}
		if fmt.Sprint(gy) != fmt.Sprint(wy) {
			t.Errorf("echo of bf16 %v = %v", wy, gy)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v\n%s", err, out.String())
		}
		start := time.Now()
		err = Eval(g.Recv(Float32, 1, 1))
		if err == nil || !strings.Contains(err.Error(), "mlx: eval") {
			t.Errorf("Recv from an exited peer = %v; want an mlx: eval error", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Recv from an exited peer failed after %v; want promptly", d)
		}
		t.Logf("recv from an exited peer: %v", err)
		return nil
	})
}

// TestNewGroupErrors: a misconfigured or unknown backend is an error, never a hang or a silent
// one-process group.
func TestNewGroupErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "hosts.json")
	if err := os.WriteFile(bad, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		o    GroupOptions
		want string
	}{
		{"unknown backend", GroupOptions{Backend: "carrier-pigeon", Hostfile: bad}, "carrier-pigeon"},
		{"bad hostfile", GroupOptions{Hostfile: bad}, "mlx: distributed ring"},
		{"rank beyond the hostfile", GroupOptions{Hostfile: hostfile(t, 2), Rank: 5}, "Rank"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := NewGroup(tc.o)
			if err == nil {
				g.Free()
				t.Fatalf("NewGroup(%+v) succeeded; want an error", tc.o)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewGroup(%+v) = %v; want it to mention %q", tc.o, err, tc.want)
			}
		})
	}
}

// Sizes of BenchmarkRingRoundTrip's messages: a decode step's hop of a Qwen3-4B-sized model (one
// 2560-wide bf16 hidden state) after a 48-byte header, and a 64-byte reply.
const (
	benchHeader  = 48
	benchPayload = 2560 * 2
	benchReply   = 64
)

// ringBenchPeer answers BenchmarkRingRoundTrip: first one array per message until a message
// starts with 0xFF, then a header array followed by a payload array until a header starts with
// 0xFF; every request gets one reply array.
func ringBenchPeer() error {
	g, err := NewGroup(GroupOptions{})
	if err != nil {
		return err
	}
	defer g.Free()
	w := NewWorker()
	defer w.Close()
	reply := make([]byte, benchReply)
	return w.Do(context.Background(), func() error {
		recv := func(n int) ([]byte, error) {
			s := NewScope()
			defer s.Close()
			return g.Recv(Uint8, 0, n).Bytes()
		}
		send := func(b []byte) error {
			s := NewScope()
			defer s.Close()
			return Eval(g.Send(FromBytes(b, Uint8, len(b)), 0))
		}
		for _, split := range []bool{false, true} {
			for {
				first := benchHeader + benchPayload
				if split {
					first = benchHeader
				}
				b, err := recv(first)
				if err != nil {
					return err
				}
				if b[0] == 0xFF {
					break
				}
				if split {
					if _, err := recv(benchPayload); err != nil {
						return err
					}
				}
				if err := send(reply); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// BenchmarkRingRoundTrip measures MLX's ring between two processes on loopback: one decode hop
// (5 KiB hidden state out, 64 bytes back) as one array each way, and as a header array plus a
// payload array out, each send and receive an Eval of its own. Compare with transport's
// BenchmarkRoundTrip (the project's framing over TCP) run on the same machine.
func BenchmarkRingRoundTrip(b *testing.B) {
	hf := hostfile(b, 2)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=bench", "MLX_RANK=1", "MLX_HOSTFILE="+hf)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Process.Kill()
	g, err := NewGroup(GroupOptions{Hostfile: hf, Rank: 0})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Free()
	w := NewWorker()
	defer w.Close()
	do := func(fn func() error) {
		if err := w.Do(context.Background(), fn); err != nil {
			b.Fatalf("%v\npeer: %s", err, out.String())
		}
	}
	send := func(data []byte) error {
		s := NewScope()
		defer s.Close()
		return Eval(g.Send(FromBytes(data, Uint8, len(data)), 1))
	}
	recv := func() error {
		s := NewScope()
		defer s.Close()
		_, err := g.Recv(Uint8, 1, benchReply).Bytes()
		return err
	}
	whole := make([]byte, benchHeader+benchPayload)
	header, payload := whole[:benchHeader], whole[benchHeader:]
	stop := make([]byte, benchHeader+benchPayload)
	stop[0] = 0xFF
	for _, tc := range []struct {
		name  string
		parts [][]byte
	}{
		{"one array", [][]byte{whole}},
		{"header and payload", [][]byte{header, payload}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			do(func() error {
				var rts []time.Duration
				start := time.Now()
				for b.Loop() {
					t := time.Now()
					for _, p := range tc.parts {
						if err := send(p); err != nil {
							return err
						}
					}
					if err := recv(); err != nil {
						return err
					}
					rts = append(rts, time.Since(t))
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "us/rt")
				// The median too: while a receive is pending MLX's ring polls its socket, so on
				// a busy machine a few round trips wait for a time slice and swing the mean.
				slices.Sort(rts)
				b.ReportMetric(float64(rts[len(rts)/2].Nanoseconds())/1e3, "p50-us/rt")
				b.ReportMetric(0, "ns/op")
				return nil
			})
		})
		do(func() error { return send(stop[:len(tc.parts[0])]) })
	}
	if err := cmd.Wait(); err != nil {
		b.Errorf("peer: %v\n%s", err, out.String())
	}
}
