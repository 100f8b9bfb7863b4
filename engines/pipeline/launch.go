package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Local is a pipeline whose stages 1..N-1 run as child processes of this one (`hippo rank`), on
// loopback: the single-machine stand-in for two Macs.
type Local struct {
	// Addr is stage 1's address; with mlx-ring, MLX's hostfile (removed by Stop).
	Addr     string
	procs    []*exec.Cmd
	logs     []*syncBuffer
	hostfile string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Launch starts `exe rank` for every stage but the first, each on a free loopback port, chained
// to the next. The children die with this process.
func Launch(ctx context.Context, exe string, plan Plan) (*Local, error) {
	n := len(plan.Split)
	addrs := make([]string, n)
	for k := 1; k < n; k++ {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		addrs[k] = a
	}
	if plan.Transport == TransportJACCL {
		return nil, fmt.Errorf("pipeline: %s links machines over Thunderbolt 5 RDMA; it cannot start its stages on this machine: start `hippo rank --transport %s` on each Mac and give the driver --hosts", TransportJACCL, TransportJACCL)
	}
	l := &Local{Addr: addrs[1]}
	if plan.Transport == TransportRing {
		hf, err := WriteHostfile(n)
		if err != nil {
			return nil, err
		}
		l.Addr, l.hostfile = hf, hf
	}
	for k := n - 1; k >= 1; k-- {
		args := []string{"rank", "--model", plan.Model, "--split", FormatSplit(plan.Split), "--stage", strconv.Itoa(k),
			"--listen", addrs[k], "--link", plan.Link.String()}
		if plan.DType != "" {
			args = append(args, "--dtype", plan.DType)
		}
		if k+1 < n {
			args = append(args, "--next", addrs[k+1])
		}
		if plan.Context > 0 {
			args = append(args, "--context", strconv.Itoa(plan.Context))
		}
		if plan.IdleTimeout > 0 {
			args = append(args, "--idle-timeout", plan.IdleTimeout.String())
		}
		if plan.NextTimeout > 0 {
			args = append(args, "--next-timeout", plan.NextTimeout.String())
		}
		if plan.RAM > 0 {
			args = append(args, "--ram", strconv.FormatInt(plan.RAM, 10))
		}
		cmd := exec.Command(exe, args...)
		if plan.Secret != "" {
			cmd.Env = append(cmd.Environ(), "HIPPO_SECRET="+plan.Secret)
		}
		if plan.Transport == TransportRing { // the ring's rank is the stage
			cmd.Args = append(cmd.Args, "--transport", TransportRing)
			cmd.Env = append(cmd.Environ(), "MLX_RANK="+strconv.Itoa(k), "MLX_HOSTFILE="+l.hostfile)
		}
		logs := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		cmd.SysProcAttr = childAttr()
		if err := cmd.Start(); err != nil {
			l.Stop()
			return nil, fmt.Errorf("pipeline: start stage %d: %w", k, err)
		}
		l.procs = append(l.procs, cmd)
		l.logs = append(l.logs, logs)
	}
	return l, nil
}

// Logs returns what the children printed, for error reports.
func (l *Local) Logs() string {
	var b bytes.Buffer
	for _, s := range l.logs {
		b.WriteString(s.String())
	}
	return b.String()
}

// Stop terminates the children and waits for them.
func (l *Local) Stop() {
	if l.hostfile != "" {
		defer os.Remove(l.hostfile)
	}
	for _, c := range l.procs {
		if c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
		}
	}
	done := make(chan struct{})
	go func() {
		for _, c := range l.procs {
			c.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		for _, c := range l.procs {
			c.Process.Kill()
		}
		<-done
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pipeline: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Process returns the process serving stage k (k >= 1), for tests that kill a stage.
func (l *Local) Process(k int) *os.Process {
	// procs were started from the last stage down to stage 1.
	return l.procs[len(l.procs)-k].Process
}
