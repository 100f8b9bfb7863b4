//go:build linux

package transport

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKernelLinkMatchesModel checks the link model against a real kernel network path: two
// "hosts" in network namespaces joined by a veth pair, each end rate-limited by the kernel's
// token-bucket filter (tbf; netem does not exist on these kernels), with the latency added by
// this package's shaper. A prefill-sized frame's round trip must land near what
// Profile.Predict says for a profile with the same rate and latency. The test makes the
// namespaces itself and uses no address outside them.
func TestKernelLinkMatchesModel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root (CI runs as root): run as root: go test ./transport -run TestKernelLinkMatchesModel")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (iproute2) is missing: install iproute2 to run the kernel link test: %v", tool, err)
		}
	}
	const (
		rateMbit = 40
		latency  = 2 * time.Millisecond
	)
	id := os.Getpid() % 100000
	nsA, nsB := fmt.Sprintf("hippo-%d-a", id), fmt.Sprintf("hippo-%d-b", id)
	vethA, vethB := fmt.Sprintf("hpa%d", id), fmt.Sprintf("hpb%d", id)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s\nthe kernel refused to build the test network (namespaces, veth or tbf); this test cannot run here", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", nsA).Run()
		exec.Command("ip", "netns", "del", nsB).Run()
	})
	run("ip", "netns", "add", nsA)
	run("ip", "netns", "add", nsB)
	run("ip", "link", "add", vethA, "type", "veth", "peer", "name", vethB)
	run("ip", "link", "set", vethA, "netns", nsA)
	run("ip", "link", "set", vethB, "netns", nsB)
	for _, h := range []struct{ ns, dev, addr string }{{nsA, vethA, "10.213.7.1/30"}, {nsB, vethB, "10.213.7.2/30"}} {
		run("ip", "-n", h.ns, "addr", "add", h.addr, "dev", h.dev)
		run("ip", "-n", h.ns, "link", "set", h.dev, "up")
		run("ip", "netns", "exec", h.ns, "tc", "qdisc", "add", "dev", h.dev, "root", "tbf",
			"rate", fmt.Sprintf("%dmbit", rateMbit), "burst", "32kb", "latency", "500ms")
	}

	shaper := Profile{Name: "latency only", Latency: latency}
	model := Profile{Name: "model", Latency: latency, Bandwidth: rateMbit * Mbit}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Sockets belong to the namespace of the thread that creates them: each side creates its
	// socket on a locked thread moved into its namespace (the thread is discarded afterwards).
	inNS := func(ns string, fn func() error) error {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			f, err := os.Open("/var/run/netns/" + ns)
			if err != nil {
				errc <- err
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("setns %s: %w", ns, err)
				return
			}
			errc <- fn()
		}()
		return <-errc
	}
	var ln *Listener
	if err := inNS(nsB, func() (err error) {
		ln, err = Listen(ctx, "10.213.7.2:0", Options{Profile: shaper, Self: stage1Self})
		return err
	}); err != nil {
		t.Fatalf("listen inside namespace %s: %v", nsB, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer c.Close()
		echoStage(t)(ctx, c)
	}()
	var c *Conn
	if err := inNS(nsA, func() (err error) {
		c, err = Dial(ctx, ln.Addr().String(), Options{Profile: shaper, Self: driverSelf, Peer: stage1Self})
		return err
	}); err != nil {
		t.Fatalf("dial from namespace %s: %v", nsA, err)
	}
	defer c.Close()

	var reply Reply
	seq := uint64(0)
	for _, tc := range []struct {
		name   string
		tokens int
		steps  int
		check  bool // bandwidth-dominated: compared with the model; the others are logged
	}{
		{"decode step (5 KiB)", 1, 20, false},
		{"prefill chunk (640 KiB)", 128, 4, true},
	} {
		fw := bf16Hidden(tc.tokens, 2560)
		req, err := Marshal(fw)
		if err != nil {
			t.Fatal(err)
		}
		want := model.Predict([]int{HeaderSize + len(req) + Overhead, HeaderSize + 40})
		seq++
		if err := c.Call(ctx, 1, seq, fw, &reply); err != nil { // warm up the window
			t.Fatal(err)
		}
		start := time.Now()
		for range tc.steps {
			seq++
			if err := c.Call(ctx, 1, seq, fw, &reply); err != nil {
				t.Fatal(err)
			}
		}
		got := time.Since(start) / time.Duration(tc.steps)
		t.Logf("%s over veth + tbf %d Mbit/s + shaper %v: round trip %v, model predicts %v (ratio %.2f)",
			tc.name, rateMbit, latency, got.Round(10*time.Microsecond), want.Round(10*time.Microsecond), float64(got)/float64(want))
		// Generous bounds: the machine may be loaded, and TCP/IP headers add a few percent.
		if tc.check && (got < want*7/10 || got > want*3/2) {
			t.Errorf("%s: kernel path round trip %v; the model predicts %v: the link model and the kernel disagree by more than the noise allows", tc.name, got, want)
		}
	}
}
