package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Peer is a long-lived mlx-lm process (bench/peers/mlx_lm_peer.py --serve) that keeps its model
// loaded between requests, so that benchmarks can alternate with Hippo round by round. Calls must
// not overlap.
type Peer struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr strings.Builder
}

// OpenBLAS returns the OpenBLAS library to preload into the peer on Linux, so that mlx-lm and
// Hippo (which links it ahead of libmlx) multiply matrices with the same BLAS. Empty elsewhere.
func OpenBLAS() string {
	if runtime.GOOS != "linux" {
		return ""
	}
	for _, p := range []string{
		"/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
		"/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// StartPeer starts the mlx-lm peer with the venv of the checkout at root.
func StartPeer(root string) (*Peer, error) {
	py := filepath.Join(root, ".venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		return nil, fmt.Errorf("mlx-lm peer: %s is missing: run `just setup`", py)
	}
	p := &Peer{cmd: exec.Command(py, filepath.Join(root, "bench", "peers", "mlx_lm_peer.py"), "--serve")}
	p.cmd.Env = os.Environ()
	if lib := OpenBLAS(); lib != "" {
		p.cmd.Env = append(p.cmd.Env, "LD_PRELOAD="+lib)
	}
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.stdout = bufio.NewReader(out)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("mlx-lm peer: %w", err)
	}
	return p, nil
}

// Call sends one request and decodes the reply into resp.
func (p *Peer) Call(req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("mlx-lm peer: %w\n%s", err, p.stderr.String())
	}
	line, err := p.stdout.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("mlx-lm peer exited: %w\n%s", err, p.stderr.String())
	}
	return json.Unmarshal(line, resp)
}

// Close stops the peer.
func (p *Peer) Close() error {
	p.stdin.Close()
	return p.cmd.Wait()
}
