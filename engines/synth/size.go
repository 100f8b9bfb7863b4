package synth

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/hippo-bench/hippo/engines/safetensors"
)

// Size is the number of bytes Write(o) would put in safetensors files (headers included, the
// index, config and tokenizer files not), computed from the layout alone: nothing is generated, so
// sizing a 12B checkpoint costs microseconds. No MLX thread is needed.
func Size(o Options) (int64, error) {
	c, err := prepare(o)
	if err != nil {
		return 0, err
	}
	shards, _ := shard(stored(c.tensors, o.Bits, c.gs, c.stDT), o.ShardBytes)
	var total int64
	for _, sh := range shards {
		infos := make([]safetensors.TensorInfo, len(sh))
		for i, e := range sh {
			infos[i] = e.info
		}
		n, err := safetensors.FileSize(infos, fileMetadata)
		if err != nil {
			return 0, fmt.Errorf("synth: %w", err)
		}
		total += n
	}
	return total, nil
}

// ConfigJSON is the config.json Write(o) would write.
func ConfigJSON(o Options) ([]byte, error) {
	c, err := prepare(o)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(c.file, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("synth: %w", err)
	}
	return append(b, '\n'), nil
}

// Real reports whether p reproduces a released model's shape; the others (tiny-*, *-demo,
// deep-narrow) are cut down for tests, demos and benchmarks.
func (p Preset) Real() bool {
	return !strings.HasPrefix(p.Name, "tiny") && !strings.HasSuffix(p.Name, "-demo") && p.Name != "deep-narrow"
}

// Smallest is the real preset of architecture arch with the fewest bytes: the default draft model
// for speculative decoding in that family.
func Smallest(arch string) (Preset, error) {
	var best Preset
	bestSize := int64(math.MaxInt64)
	for _, name := range Names() {
		p := presets[name]
		if p.Arch != arch || !p.Real() {
			continue
		}
		n, err := Size(Options{Preset: name})
		if err != nil {
			return Preset{}, err
		}
		if n < bestSize {
			best, bestSize = p, n
		}
	}
	if bestSize == math.MaxInt64 {
		return Preset{}, fmt.Errorf("synth: no %s preset to draft with", arch)
	}
	return best, nil
}
