package transport

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Dist is the distribution of a profile's random extra delay (jitter).
type Dist uint8

const (
	// HalfNormal draws |N(0, Jitter)|: mostly small, rarely above 2-3x Jitter, with mean
	// Jitter x sqrt(2/pi). It fits wired links, whose delay varies a little around a floor.
	HalfNormal Dist = iota
	// Exponential draws an exponential variable with mean Jitter: the long tail of a shared
	// radio channel (contention, retries, power save), where an occasional frame waits ten
	// times longer than the typical one.
	Exponential
)

// String returns "halfnormal" or "exp".
func (d Dist) String() string {
	switch d {
	case HalfNormal:
		return "halfnormal"
	case Exponential:
		return "exp"
	}
	return fmt.Sprintf("dist(%d)", uint8(d))
}

// jitterCap bounds a single jitter draw at jitterCap x Jitter, so one unlucky draw cannot
// stall a benchmark for seconds. It changes the distribution's mean by less than 0.1%.
const jitterCap = 10

// Profile describes one direction of a network link for the user-space shaper and for
// predictions. Each direction of a shaped connection adds Latency + a random jitter + the
// serialization time of the bytes at Bandwidth. The zero value is the plain link (no
// shaping), the same as the "loopback" profile.
type Profile struct {
	// Name is how the profile is selected: "loopback", "thunderbolt", ... or the
	// "custom:..." string it was parsed from.
	Name string
	// Latency is the fixed one-way delay, half the link's minimum round trip.
	Latency time.Duration
	// Jitter scales the random extra one-way delay; see Dist.
	Jitter time.Duration
	// Dist is the jitter distribution.
	Dist Dist
	// Bandwidth is the sustained TCP throughput in bytes per second; 0 means unlimited.
	Bandwidth float64
	// Source says where the numbers come from.
	Source string
}

// Gbit and Mbit convert link rates to Profile.Bandwidth units (bytes per second).
const (
	Mbit = 1e6 / 8
	Gbit = 1e9 / 8
)

// The built-in profiles. Latency is half the smallest measured round trip; the jitter is
// chosen so that the mean round trip lands on the measured typical value. Bandwidth is a
// measured single-stream TCP throughput, not the link's signalling rate.
var builtin = []Profile{
	{
		Name:   "loopback",
		Source: "no shaping: the connection's own link (on one host, the kernel's loopback)",
	},
	{
		// Round trips 0.38-0.95 ms over the Thunderbolt bridge between Mac Studio M3 Ultra
		// (TB5 mesh), measured during an exo pipeline run: one-way floor 0.19 ms; a
		// half-normal jitter with sigma 0.14 ms gives a mean round trip of 0.60 ms, the
		// middle of that range and close to the ~300 us per message TCP latency Jeff
		// Geerling reports for TCP over Thunderbolt (vs < 50 us with RDMA over TB5).
		// Throughput: 16.4 Gbit/s single-stream iperf3 TCP over a Thunderbolt 4/USB4
		// Thunderbolt Bridge from a MacBook Pro M2 (20/20 Gbit/s link); users of a 40 Gbit/s
		// Thunderbolt port report "about 20 Gbit/s" for TCP (swellweb/targetBridge#110).
		Name:      "thunderbolt",
		Latency:   190 * time.Microsecond,
		Jitter:    140 * time.Microsecond,
		Dist:      HalfNormal,
		Bandwidth: 16.4 * Gbit,
		Source: "RTT 0.38-0.95 ms: github.com/exo-explore/exo/issues/2295; TCP ~300 us vs RDMA < 50 us: " +
			"jeffgeerling.com/blog/2025/15-tb-vram-on-mac-studio-rdma-over-thunderbolt-5; " +
			"16.4 Gbit/s iperf3 over Thunderbolt Bridge: jiribrejcha.net/2024/05/direct-20-gbps-connection-between-mac-and-windows-machine-with-no-ethernet-adapters/",
	},
	{
		// Round trips 4.9-54 ms (averages 7.5-30 ms) between Macs over Wi-Fi in the same
		// exo run: one-way floor 2.45 ms plus an exponential tail with mean 5 ms gives a
		// mean round trip of 14.9 ms and, through the tail, occasional round trips of tens
		// of ms. Cross-check: the seed's Gemma-3-12B pipeline step is 19 ms slower on
		// Wi-Fi (139 ms) than on Thunderbolt (120 ms), one round trip per step.
		// Throughput: a 2021 MacBook Pro (Wi-Fi 6, 2x2, 80 MHz, 1200 Mbit/s PHY) measured
		// 758 Mbit/s TCP to an ASUS RT-AX89X; between two wireless Macs every byte crosses
		// the shared channel twice (Mac to AP, AP to Mac), which halves it to 379 Mbit/s
		// (thornelabs.net measured the same halving laptop to laptop).
		Name:      "wifi",
		Latency:   2450 * time.Microsecond,
		Jitter:    5 * time.Millisecond,
		Dist:      Exponential,
		Bandwidth: 379 * Mbit,
		Source: "RTT 4.9-54 ms, avg 7.5-30 ms: github.com/exo-explore/exo/issues/2295; " +
			"MacBook Pro Wi-Fi 6 758 Mbit/s: macitynet.it/macbook-pro-16-il-wifi-meno-veloce-rispetto-ad-altri-computer/; " +
			"halved wireless-to-wireless: thornelabs.net/posts/wireless-laptop-to-wireless-laptop-real-world-throughput-benchmarks",
	},
	{
		// A wired home LAN: ping -f rtt min/avg/max 0.075/0.125/0.191 ms to the core router
		// (Aleksey Shipilev's home network write-up): floor 40 us one-way, half-normal sigma
		// 30 us gives a mean round trip of 0.13 ms. Throughput: 941 Mbit/s iperf3 TCP from a
		// MacBook Pro over gigabit Ethernet (esnet/iperf#1170); 939 Mbit/s LAN baseline
		// between two Macs (tailscale/tailscale#19320).
		Name:      "ethernet-1g",
		Latency:   40 * time.Microsecond,
		Jitter:    30 * time.Microsecond,
		Dist:      HalfNormal,
		Bandwidth: 941 * Mbit,
		Source: "ping rtt 0.075/0.125/0.191 ms: github.com/guevara/read-it-later/issues/10860 (shipilev.net home network); " +
			"941 Mbit/s iperf3: github.com/esnet/iperf/issues/1170; 939 Mbit/s Mac to Mac: github.com/tailscale/tailscale/issues/19320",
	},
	{
		// 10-Gigabit Ethernet: 20 us end-to-end application latency between two hosts
		// (Hurwitz and Feng, "Initial End-to-End Performance Evaluation of 10-Gigabit
		// Ethernet", Hot Interconnects 11); half-normal sigma 10 us for the host stack.
		// Throughput: iperf 9.5-9.9 Gbit/s on a back-to-back 10G link (esnet/iperf#123);
		// 9.5 Gbit/s is the conservative end.
		Name:      "ethernet-10g",
		Latency:   20 * time.Microsecond,
		Jitter:    10 * time.Microsecond,
		Dist:      HalfNormal,
		Bandwidth: 9.5 * Gbit,
		Source: "20 us end-to-end: hoti.org/archive/Hoti11_program/abstracts/24.html (Hurwitz & Feng); " +
			"9.5-9.9 Gbit/s iperf: github.com/esnet/iperf/issues/123",
	},
}

// Profiles returns the built-in profiles, loopback first. The slice is a copy.
func Profiles() []Profile {
	return append([]Profile(nil), builtin...)
}

func profileNames() string {
	names := make([]string, len(builtin))
	for i, p := range builtin {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

// ParseProfile returns the built-in profile with the given name, or parses a custom one:
//
//	custom:latency=0.5ms,jitter=0.1ms,bandwidth=10Gbit,dist=exp
//
// Keys may come in any order, each at most once; omitted keys are zero (bandwidth 0 is
// unlimited; dist defaults to halfnormal). Durations use Go syntax (500us, 0.5ms). Bandwidth
// takes a number and a unit: bit, kbit, Mbit, Gbit, Tbit (or kbps, Mbps, Gbps) for bits per
// second, B, kB, MB, GB, KiB, MiB, GiB for bytes per second, optionally followed by "/s".
// "Gb" or "Mb" alone are refused as ambiguous.
func ParseProfile(s string) (Profile, error) {
	for _, p := range builtin {
		if s == p.Name {
			return p, nil
		}
	}
	spec, ok := strings.CutPrefix(s, "custom:")
	if !ok {
		return Profile{}, fmt.Errorf("transport: unknown link profile %q: use one of %s, or custom:latency=0.5ms,jitter=0.1ms,bandwidth=10Gbit", s, profileNames())
	}
	p := Profile{Name: s, Source: "user-defined"}
	if spec == "" {
		return Profile{}, fmt.Errorf("transport: link profile %q sets nothing: add latency=, jitter=, bandwidth= or dist=", s)
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(spec, ",") {
		key, val, ok := strings.Cut(kv, "=")
		key = strings.TrimSpace(key)
		val = strings.TrimSpace(val)
		if !ok || key == "" || val == "" {
			return Profile{}, fmt.Errorf("transport: link profile %q: %q is not key=value", s, kv)
		}
		if seen[key] {
			return Profile{}, fmt.Errorf("transport: link profile %q sets %s twice", s, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "latency":
			p.Latency, err = parseDelay(val)
		case "jitter":
			p.Jitter, err = parseDelay(val)
		case "bandwidth":
			p.Bandwidth, err = parseBandwidth(val)
		case "dist":
			switch val {
			case "halfnormal":
				p.Dist = HalfNormal
			case "exp":
				p.Dist = Exponential
			default:
				err = fmt.Errorf("unknown distribution %q: use halfnormal or exp", val)
			}
		default:
			err = fmt.Errorf("unknown key %q: use latency, jitter, bandwidth or dist", key)
		}
		if err != nil {
			return Profile{}, fmt.Errorf("transport: link profile %q: %s: %w", s, key, err)
		}
	}
	return p, nil
}

// maxDelay bounds a custom latency or jitter: a longer one is a typo, not a link.
const maxDelay = time.Minute

func parseDelay(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration like 500us or 0.5ms", s)
	}
	if d < 0 || d > maxDelay {
		return 0, fmt.Errorf("%v is out of range [0, %v]", d, maxDelay)
	}
	return d, nil
}

// bandwidthUnits maps a unit to bytes per second. Bits are lowercase "bit"/"bps"; bytes are
// an uppercase "B", so "Gb" is refused rather than guessed.
var bandwidthUnits = map[string]float64{
	"bit": 1.0 / 8, "kbit": 1e3 / 8, "Kbit": 1e3 / 8, "Mbit": Mbit, "Gbit": Gbit, "Tbit": 1e12 / 8,
	"bps": 1.0 / 8, "kbps": 1e3 / 8, "Kbps": 1e3 / 8, "Mbps": Mbit, "Gbps": Gbit, "Tbps": 1e12 / 8,
	"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

func parseBandwidth(s string) (float64, error) {
	if s == "0" {
		return 0, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	if i < 0 {
		return 0, fmt.Errorf("%q has no unit: write it like %sGbit or %sMB/s", s, s, s)
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a rate like 10Gbit or 400MB/s", s)
	}
	num, unit := s[:i], strings.TrimSuffix(s[i:], "/s")
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a rate like 10Gbit or 400MB/s", s)
	}
	scale, ok := bandwidthUnits[unit]
	if !ok {
		if unit == "Gb" || unit == "Mb" || unit == "Kb" || unit == "kb" || unit == "Tb" {
			return 0, fmt.Errorf("unit %q is ambiguous: write %sit for bits or %sB for bytes", unit, unit, unit[:1])
		}
		return 0, fmt.Errorf("unknown unit %q in %q: use bit, Mbit, Gbit, MB, GB, MiB or GiB", unit, s)
	}
	bw := v * scale
	if math.IsInf(bw, 0) || bw > 1e15 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return bw, nil
}

// String returns the profile's name, or "loopback" for the zero value.
func (p Profile) String() string {
	if p.Name == "" {
		return "loopback"
	}
	return p.Name
}

// shapes reports whether the profile changes anything.
func (p Profile) shapes() bool { return p.Latency > 0 || p.Jitter > 0 || p.Bandwidth > 0 }

// MeanJitter returns the expected value of one jitter draw.
func (p Profile) MeanJitter() time.Duration {
	if p.Dist == Exponential {
		return p.Jitter
	}
	return time.Duration(float64(p.Jitter) * math.Sqrt(2/math.Pi))
}

// Serialization returns how long n bytes take to leave the sender at Bandwidth (0 if
// unlimited).
func (p Profile) Serialization(n int) time.Duration {
	if p.Bandwidth <= 0 || n <= 0 {
		return 0
	}
	return time.Duration(float64(n) / p.Bandwidth * float64(time.Second))
}

// Predict returns the expected network time the profile adds to an exchange that sends the
// given messages one after another, each only after the previous one arrived (a request
// and its reply, or a request relayed hop by hop): for each message, Latency + mean jitter +
// its serialization time. Pass whole frame sizes (HeaderSize + payload). It predicts what the
// shaper adds; the real link under it (loopback: tens of microseconds) comes on top.
func (p Profile) Predict(bytesPerHop []int) time.Duration {
	var total time.Duration
	for _, n := range bytesPerHop {
		total += p.Latency + p.MeanJitter() + p.Serialization(n)
	}
	return total
}
