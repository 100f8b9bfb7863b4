package pipeline

import (
	"bytes"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"
)

// Hosts describes a pipeline on real machines: where each stage's `hippo rank` listens. Stage 0
// is the driver, the machine that runs `hippo run` or `hippo sweep`.
//
//	stages:
//	  - name: mac-a              # the driver; no address
//	  - name: mac-b
//	    addr: 192.168.2.2:7001   # e.g. the Thunderbolt Bridge address
//	split: "0:14,14:28"          # optional; when omitted, weighted by the memory each rank reports
type Hosts struct {
	Stages []HostStage `yaml:"stages"`
	Split  string      `yaml:"split"`
}

// HostStage is one machine of a pipeline.
type HostStage struct {
	Name string `yaml:"name"`
	Addr string `yaml:"addr"`
}

// LoadHosts reads and checks a hosts file.
func LoadHosts(path string) (*Hosts, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hosts: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var h Hosts
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("hosts: %s: %w (see `hippo run --help` for the format)", path, err)
	}
	if len(h.Stages) < 2 {
		return nil, fmt.Errorf("hosts: %s lists %d stage(s): a pipeline needs the driver and at least one rank", path, len(h.Stages))
	}
	for i, s := range h.Stages[1:] {
		if s.Addr == "" {
			return nil, fmt.Errorf("hosts: %s: stage %d (%s) has no addr: give host:port of its `hippo rank --listen`", path, i+1, s.Name)
		}
	}
	return &h, nil
}
