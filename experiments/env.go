package experiments

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hippo-bench/hippo/results"
)

// HostEnv describes the machine this process runs on and the harness checkout: host, OS,
// architecture, CPU model (/proc/cpuinfo or sysctl), RAM, Go version and the git commit of the
// checkout directory (the current directory when ""), with "-dirty" when tracked files changed.
// mlxVersion is recorded as given. Probes that fail leave their field empty.
func HostEnv(ctx context.Context, mlxVersion, checkout string) results.Env {
	e := results.Env{
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		CPUs:       runtime.NumCPU(),
		GoVersion:  runtime.Version(),
		MLXVersion: mlxVersion,
	}
	e.Host, _ = os.Hostname()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch runtime.GOOS {
	case "linux":
		e.CPU = cpuinfoModel()
		e.RAMBytes = meminfoTotal()
	case "darwin":
		e.CPU = command(ctx, "", "sysctl", "-n", "machdep.cpu.brand_string")
		e.RAMBytes, _ = strconv.ParseUint(command(ctx, "", "sysctl", "-n", "hw.memsize"), 10, 64)
	}
	if commit := command(ctx, checkout, "git", "rev-parse", "HEAD"); commit != "" {
		e.GitCommit = commit
		if command(ctx, checkout, "git", "status", "--porcelain", "--untracked-files=no") != "" {
			e.GitCommit += "-dirty"
		}
	}
	return e
}

func command(ctx context.Context, dir, name string, args ...string) string {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	// Keep git from refreshing the index: describing the checkout must not change it.
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func cpuinfoModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name", "Model", "Hardware", "cpu model":
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func meminfoTotal() uint64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
