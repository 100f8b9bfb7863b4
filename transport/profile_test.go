package transport

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseProfile(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Profile
	}{
		{name: "loopback", in: "loopback", want: builtin[0]},
		{name: "thunderbolt", in: "thunderbolt", want: builtin[1]},
		{name: "wifi", in: "wifi", want: builtin[2]},
		{
			name: "custom from the docs",
			in:   "custom:latency=0.5ms,jitter=0.1ms,bandwidth=10Gbit",
			want: Profile{Name: "custom:latency=0.5ms,jitter=0.1ms,bandwidth=10Gbit", Latency: 500 * time.Microsecond,
				Jitter: 100 * time.Microsecond, Bandwidth: 10 * Gbit, Source: "user-defined"},
		},
		{
			name: "custom any order with dist",
			in:   "custom:dist=exp,bandwidth=400MB/s,latency=2ms",
			want: Profile{Name: "custom:dist=exp,bandwidth=400MB/s,latency=2ms", Latency: 2 * time.Millisecond,
				Dist: Exponential, Bandwidth: 400e6, Source: "user-defined"},
		},
		{
			name: "custom latency only",
			in:   "custom:latency=250us",
			want: Profile{Name: "custom:latency=250us", Latency: 250 * time.Microsecond, Source: "user-defined"},
		},
		{
			name: "custom binary bytes and bps",
			in:   "custom:bandwidth=1.5GiB",
			want: Profile{Name: "custom:bandwidth=1.5GiB", Bandwidth: 1.5 * (1 << 30), Source: "user-defined"},
		},
		{
			name: "custom Mbps",
			in:   "custom:bandwidth=100Mbps",
			want: Profile{Name: "custom:bandwidth=100Mbps", Bandwidth: 100 * Mbit, Source: "user-defined"},
		},
		{
			name: "custom unlimited",
			in:   "custom:bandwidth=0,jitter=1ms,dist=halfnormal",
			want: Profile{Name: "custom:bandwidth=0,jitter=1ms,dist=halfnormal", Jitter: time.Millisecond, Source: "user-defined"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseProfile(tc.in)
			if err != nil {
				t.Fatalf("ParseProfile(%q) = %v", tc.in, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseProfile(%q) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestParseProfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		wantMsg string
	}{
		{name: "empty", in: "", wantMsg: "unknown link profile"},
		{name: "unknown name", in: "infiniband", wantMsg: "use one of loopback, thunderbolt, wifi"},
		{name: "wrong case", in: "WiFi", wantMsg: "unknown link profile"},
		{name: "custom empty", in: "custom:", wantMsg: "sets nothing"},
		{name: "not key=value", in: "custom:latency", wantMsg: "is not key=value"},
		{name: "empty value", in: "custom:latency=", wantMsg: "is not key=value"},
		{name: "trailing comma", in: "custom:latency=1ms,", wantMsg: "is not key=value"},
		{name: "unknown key", in: "custom:delay=1ms", wantMsg: `unknown key "delay"`},
		{name: "duplicate key", in: "custom:latency=1ms,latency=2ms", wantMsg: "sets latency twice"},
		{name: "bare number latency", in: "custom:latency=5", wantMsg: "is not a duration"},
		{name: "negative latency", in: "custom:latency=-1ms", wantMsg: "out of range"},
		{name: "huge jitter", in: "custom:jitter=2h", wantMsg: "out of range"},
		{name: "ambiguous Gb", in: "custom:bandwidth=10Gb", wantMsg: "write Gbit for bits or GB for bytes"},
		{name: "ambiguous Mb", in: "custom:bandwidth=10Mb", wantMsg: "ambiguous"},
		{name: "unknown unit", in: "custom:bandwidth=10Gbits", wantMsg: `unknown unit "Gbits"`},
		{name: "no unit", in: "custom:bandwidth=10", wantMsg: "has no unit"},
		{name: "no number", in: "custom:bandwidth=Gbit", wantMsg: "is not a rate"},
		{name: "negative rate", in: "custom:bandwidth=-1Gbit", wantMsg: "is not a rate"},
		{name: "two dots", in: "custom:bandwidth=1.2.3Gbit", wantMsg: "is not a rate"},
		{name: "unknown dist", in: "custom:dist=pareto", wantMsg: "use halfnormal or exp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProfile(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ParseProfile(%q) = %v; want an error containing %q", tc.in, err, tc.wantMsg)
			}
		})
	}
}

func TestBuiltinProfilesAreCitedAndParse(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			if seen[p.Name] {
				t.Errorf("profile %q listed twice", p.Name)
			}
			seen[p.Name] = true
			if p.Source == "" {
				t.Errorf("profile %q has no Source", p.Name)
			}
			got, err := ParseProfile(p.Name)
			if err != nil || got != p {
				t.Errorf("ParseProfile(%q) = %+v, %v; want %+v", p.Name, got, err, p)
			}
			if p.Name != "loopback" && (p.Latency <= 0 || p.Bandwidth <= 0) {
				t.Errorf("profile %q has latency %v, bandwidth %v; want both set", p.Name, p.Latency, p.Bandwidth)
			}
		})
	}
	if p := Profiles(); p[0].Name != "loopback" || p[0].shapes() {
		t.Errorf("Profiles()[0] = %+v; want the unshaped loopback first", p[0])
	}
}

// TestProfilesMatchMeasurements ties the built-in numbers back to the round trips they were
// derived from: the minimum round trip is 2 x Latency and the mean falls in the measured range.
func TestProfilesMatchMeasurements(t *testing.T) {
	for _, tc := range []struct {
		name              string
		minRTT            time.Duration
		meanLo, meanHi    time.Duration
		minTCPMbit, maxMb float64
	}{
		// exo#2295: Thunderbolt bridge 0.38-0.95 ms.
		{name: "thunderbolt", minRTT: 380 * time.Microsecond, meanLo: 380 * time.Microsecond, meanHi: 950 * time.Microsecond, minTCPMbit: 10000, maxMb: 40000},
		// exo#2295: Wi-Fi 4.9-54 ms, averages 7.5-30 ms.
		{name: "wifi", minRTT: 4900 * time.Microsecond, meanLo: 7500 * time.Microsecond, meanHi: 30 * time.Millisecond, minTCPMbit: 100, maxMb: 1200},
		// ping rtt min/avg/max 0.075/0.125/0.191 ms.
		{name: "ethernet-1g", minRTT: 80 * time.Microsecond, meanLo: 75 * time.Microsecond, meanHi: 191 * time.Microsecond, minTCPMbit: 900, maxMb: 1000},
		{name: "ethernet-10g", minRTT: 40 * time.Microsecond, meanLo: 40 * time.Microsecond, meanHi: 100 * time.Microsecond, minTCPMbit: 9000, maxMb: 10000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseProfile(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := 2 * p.Latency; got != tc.minRTT {
				t.Errorf("minimum round trip = %v; want %v", got, tc.minRTT)
			}
			if got := p.Predict([]int{0, 0}); got < tc.meanLo || got > tc.meanHi {
				t.Errorf("mean round trip = %v; want within [%v, %v]", got, tc.meanLo, tc.meanHi)
			}
			if mbit := p.Bandwidth / Mbit; mbit < tc.minTCPMbit || mbit > tc.maxMb {
				t.Errorf("bandwidth = %.0f Mbit/s; want within [%.0f, %.0f]", mbit, tc.minTCPMbit, tc.maxMb)
			}
		})
	}
}

func TestPredict(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile string
		hops    []int
		want    time.Duration
	}{
		{name: "loopback adds nothing", profile: "loopback", hops: []int{5148, 52}, want: 0},
		{name: "latency only", profile: "custom:latency=1ms", hops: []int{100, 100}, want: 2 * time.Millisecond},
		{
			name:    "serialization at 1 MB/s",
			profile: "custom:latency=1ms,bandwidth=8Mbit",
			hops:    []int{1000, 4},
			want:    2*time.Millisecond + time.Millisecond + 4*time.Microsecond,
		},
		{name: "exponential jitter mean", profile: "custom:jitter=3ms,dist=exp", hops: []int{0}, want: 3 * time.Millisecond},
		{name: "half-normal jitter mean", profile: "custom:jitter=1ms", hops: []int{0}, want: 797884 * time.Nanosecond},
		{name: "no messages", profile: "wifi", hops: nil, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Predict(tc.hops); got != tc.want {
				t.Errorf("ParseProfile(%q).Predict(%v) = %v; want %v", tc.profile, tc.hops, got, tc.want)
			}
		})
	}
}
