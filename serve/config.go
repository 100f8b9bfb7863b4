package serve

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/synth"
)

// DefaultListen is where `hippo serve` listens unless told otherwise: loopback only, so that
// exposing the server is a decision.
const DefaultListen = "127.0.0.1:8002"

// Config is what `hippo serve` runs: the hippo.yaml file, or the same built from flags. The zero
// value of every field but Models picks a default.
type Config struct {
	// Listen is the address to listen on (DefaultListen).
	Listen string `yaml:"listen"`
	// APIKeys are the accepted bearer keys; none leaves the API open.
	APIKeys  []string `yaml:"api_keys"`
	MaxQueue int      `yaml:"max_queue"`
	Timeout  Duration `yaml:"timeout"`
	// WriteTimeout is how long a streamed write may wait on a client that stopped reading
	// (DefaultWriteTimeout); then the client is dropped and its generation freed.
	WriteTimeout Duration `yaml:"write_timeout"`
	// MaxBatch bounds the generations a model runs at once by continuous batching
	// (engines.DefaultMaxBatch); the memory guard may lower it. 1 serves one at a time.
	MaxBatch int      `yaml:"max_batch"`
	MaxBody  ByteSize `yaml:"max_body"`
	// RAM overrides the detected memory for the memory guard.
	RAM    ByteSize      `yaml:"ram"`
	Models []ModelConfig `yaml:"models"`
}

// ModelConfig is one served model.
type ModelConfig struct {
	// ID is the name clients ask for; the default is the preset name of a synth: model, else the
	// checkpoint directory's base name.
	ID string `yaml:"id"`
	// Model is a checkpoint directory or synth:PRESET.
	Model string `yaml:"model"`
	// DType is the compute dtype: f32, bf16 or f16 (default: the backend's fastest).
	DType string `yaml:"dtype"`
	// Context is the longest prompt plus completion served (DefaultContext).
	Context int `yaml:"context"`

	// Mode is how the model runs: standalone (the default), pipeline, spec or pipeline+spec; the
	// fields below configure it as `hippo run`'s flags of the same names do.
	Mode string `yaml:"mode"`
	// Speculative modes: drafter model, lookup or dflash; its draft checkpoint (DIR or
	// synth:PRESET); tokens drafted per step.
	Drafter     string `yaml:"drafter"`
	Draft       string `yaml:"draft"`
	DraftTokens int    `yaml:"draft_tokens"`
	// DraftConfidence, above 0, cuts each greedy dflash draft where the drafter's joint
	// probability of its drafts falls below it (hippo run's --draft-confidence).
	DraftConfidence float64 `yaml:"draft_confidence"`
	// Pipeline modes: stages or split, link profile, transport, reply, and a hosts file of ranks
	// on other machines (none starts the stages here).
	Stages    int    `yaml:"stages"`
	Split     string `yaml:"split"`
	Link      string `yaml:"link"`
	Transport string `yaml:"transport"`
	Reply     string `yaml:"reply"`
	Hosts     string `yaml:"hosts"`
}

// Launch is the launch configuration of m, with its model and draft resolved to the checkpoint
// directories dir and draft.
func (m ModelConfig) Launch(dir, draft string, ram int64) launch.Config {
	ctxLen := m.Context
	if ctxLen == 0 {
		ctxLen = DefaultContext
	}
	return launch.Config{Mode: m.Mode, Model: dir, DType: m.DType, Context: ctxLen, RAM: ram,
		Drafter: m.Drafter, Draft: draft, DraftTokens: m.DraftTokens, DraftConfidence: m.DraftConfidence, Stages: m.Stages, Split: m.Split,
		Link: m.Link, Transport: m.Transport, Reply: m.Reply, Hosts: m.Hosts}
}

// Duration is a time.Duration written as "30s" or "5m" in YAML.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: %q is not a duration: write one like 30s or 5m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a size written as "1MiB", "16GB" or a plain byte count in YAML.
type ByteSize int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := engines.ParseBytes(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: %q is not a size: write one like 1MiB or 16GB", n.Line, n.Value)
	}
	*b = ByteSize(v)
	return nil
}

// typeNames are Go type names in yaml.v3 messages, which mean nothing to someone writing YAML.
var typeNames = regexp.MustCompile(` in type serve\.\w+`)

// ReadConfig reads a hippo.yaml strictly: unknown keys, a second document or a wrong type are
// errors that name the line.
func ReadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read serve config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses and validates the contents of a hippo.yaml.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("the file is empty: list at least one model under models:")
		}
		msg := strings.TrimPrefix(typeNames.ReplaceAllString(err.Error(), ""), "yaml: ")
		return Config{}, errors.New(msg)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document: put everything in one")
	}
	return c, c.Validate()
}

// Validate checks c and fills in model ids.
func (c *Config) Validate() error {
	if len(c.Models) == 0 {
		return errors.New("no models: list at least one under models: (each with model: DIR or synth:PRESET)")
	}
	if c.MaxQueue < 0 {
		return fmt.Errorf("max_queue %d: must be at least 0 (0 means %d)", c.MaxQueue, DefaultMaxQueue)
	}
	if c.MaxBatch < 0 {
		return fmt.Errorf("max_batch %d: must be at least 0 (0 means %d)", c.MaxBatch, engines.DefaultMaxBatch)
	}
	for i, k := range c.APIKeys {
		if strings.TrimSpace(k) == "" {
			return fmt.Errorf("api_keys[%d] is empty", i)
		}
	}
	seen := map[string]bool{}
	for i := range c.Models {
		m := &c.Models[i]
		if m.Model == "" {
			return fmt.Errorf("models[%d]: model is required: a checkpoint directory or synth:PRESET", i)
		}
		if m.DType != "" {
			if _, err := mlx.ParseDType(m.DType); err != nil {
				return fmt.Errorf("models[%d] (%s): %w", i, m.Model, err)
			}
		}
		if m.Mode != "" && !slices.Contains(launch.Modes, m.Mode) {
			return fmt.Errorf("models[%d] (%s): mode %q: use %s", i, m.Model, m.Mode, strings.Join(launch.Modes, ", "))
		}
		if m.DraftTokens < 0 || m.Stages < 0 {
			return fmt.Errorf("models[%d] (%s): draft_tokens and stages must be positive", i, m.Model)
		}
		if m.Context < 0 {
			return fmt.Errorf("models[%d] (%s): context %d: must be positive", i, m.Model, m.Context)
		}
		if !engines.ValidDraftConfidence(m.DraftConfidence) {
			return fmt.Errorf("models[%d] (%s): draft_confidence %g: use 0 (whole dflash blocks) up to below 1", i, m.Model, m.DraftConfidence)
		}
		if m.ID == "" {
			m.ID = DefaultModelID(m.Model)
		}
		if seen[m.ID] {
			return fmt.Errorf("models[%d]: id %q is used twice: give each model its own id:", i, m.ID)
		}
		seen[m.ID] = true
	}
	return nil
}

// DefaultModelID names a model for clients: the preset of synth:PRESET, else the directory's
// base name.
func DefaultModelID(model string) string {
	if p, ok := strings.CutPrefix(model, synth.Prefix); ok {
		return p
	}
	return filepath.Base(filepath.Clean(model))
}
