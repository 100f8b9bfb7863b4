package pipeline

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestParseTransport(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "", want: TransportTCP},
		{in: "tcp", want: TransportTCP},
		{in: "mlx-ring", want: TransportRing},
		{in: "carrier-pigeon", err: "use tcp, mlx-ring or mlx-jaccl"},
	} {
		got, err := ParseTransport(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseTransport(%q) = %q, %v; want %q, error containing %q", tc.in, got, err, tc.want, tc.err)
		}
	}
	got, err := ParseTransport(TransportJACCL)
	if runtime.GOOS == "darwin" {
		if got != TransportJACCL || err != nil {
			t.Errorf("ParseTransport(mlx-jaccl) on macOS = %q, %v; want it accepted", got, err)
		}
	} else if err == nil || !strings.Contains(err.Error(), "exists only on macOS") {
		t.Errorf("ParseTransport(mlx-jaccl) on %s = %q, %v; want an error saying JACCL is macOS only", runtime.GOOS, got, err)
	}
}

func TestCheckRingLoopback(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts [][]string
		err   string
	}{
		{name: "loopback", hosts: [][]string{{"127.0.0.1:5000"}, {"127.0.0.1:5001"}}},
		{name: "ipv6 loopback", hosts: [][]string{{"[::1]:5000"}, {"127.0.0.1:5001"}}},
		{name: "lan address", hosts: [][]string{{"127.0.0.1:5000"}, {"192.168.2.2:5001"}}, err: "rank 1 at 192.168.2.2:5001, beyond loopback"},
		{name: "host name", hosts: [][]string{{"mac-b.local:5000"}}, err: "beyond loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := json.Marshal(tc.hosts)
			hf := filepath.Join(t.TempDir(), "hosts.json")
			if err := os.WriteFile(hf, b, 0o600); err != nil {
				t.Fatal(err)
			}
			err := CheckRingLoopback(hf)
			if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("CheckRingLoopback(%v) = %v; want error containing %q", tc.hosts, err, tc.err)
			}
		})
	}
}

func TestCheckExposure(t *testing.T) {
	for _, tc := range []struct {
		addr, secret string
		ok           bool
	}{
		{"127.0.0.1:7001", "", true},
		{"[::1]:7001", "", true},
		{"localhost:7001", "", true},
		{"0.0.0.0:7001", "", false},
		{":7001", "", false},
		{"192.168.2.2:7001", "", false},
		{"192.168.2.2:7001", "s3cret", true},
	} {
		err := CheckExposure(tc.addr, tc.secret)
		if (err == nil) != tc.ok {
			t.Errorf("CheckExposure(%q, secret %v) = %v; want ok %v", tc.addr, tc.secret != "", err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--secret-file") {
			t.Errorf("CheckExposure(%q) = %v; want it to say how to give a secret", tc.addr, err)
		}
	}
}
