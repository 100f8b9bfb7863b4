package engines

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// SafetyFactor is the share of RAM a model may plan to use: the OS, other processes and (on a
// Mac) the GPU wired-memory limit of about 75% need the rest.
const SafetyFactor = 0.75

// ErrMemory reports a model that does not fit.
var ErrMemory = errors.New("model does not fit in memory")

// Estimate is the memory a model needs, in bytes.
type Estimate struct {
	Weights, KVCache, Overhead int64
}

// Total is the sum of the parts.
func (e Estimate) Total() int64 { return e.Weights + e.KVCache + e.Overhead }

// EstimateMemory predicts the memory of running c in compute dtype dt with context tokens of
// KV cache, counting the compute dtype (float32 doubles a bf16 checkpoint) and quantization.
func EstimateMemory(c *model.Config, dt mlx.DType, context int) Estimate {
	p := weightParts(c, dt)
	var cache int64
	for i := 0; i < c.NumLayers; i++ {
		cache += LayerKVBytes(c, dt, context, i)
	}
	return Estimate{Weights: int64(c.NumLayers)*p.layer + p.embed + p.head, KVCache: cache, Overhead: overhead(c, dt, context)}
}

// StageMemory predicts the memory of one pipeline stage running layers r of c with context
// tokens of KV cache: its layers, plus the embeddings on the first stage and the head on the
// last (for tied embeddings, the embedding table again).
func StageMemory(c *model.Config, dt mlx.DType, r model.Range, context int) Estimate {
	p := weightParts(c, dt)
	var e Estimate
	for i := r.From; i < r.To; i++ {
		e.Weights += p.layer
		e.KVCache += LayerKVBytes(c, dt, context, i)
	}
	if r.From == 0 {
		e.Weights += p.embed
	}
	if r.To == c.NumLayers {
		e.Weights += p.head
		if c.Tied() && r.From != 0 {
			e.Weights += p.embed
		}
	}
	e.Overhead = overhead(c, dt, context)
	return e
}

// parts are the weight bytes of one layer, of the embedding table and of the head (final norm,
// plus lm_head when it is not tied to the embeddings).
type parts struct{ layer, embed, head int64 }

func weightParts(c *model.Config, dt mlx.DType) parts {
	el := int64(dt.Size())
	hd := c.KVHeadDim()
	h, inter, v := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	q, kv := int64(c.NumHeads*hd), int64(c.NumKVHeads*hd)
	matrix := func(out, in int64) int64 {
		if c.Quantization == nil {
			return out * in * el
		}
		g := int64(c.Quantization.GroupSize)
		return out*in*int64(c.Quantization.Bits)/8 + 2*out*(in/g)*el
	}
	p := parts{
		layer: matrix(q, h) + 2*matrix(kv, h) + matrix(h, q) + 3*matrix(inter, h) + 4*h*el + 2*int64(hd)*el,
		embed: matrix(v, h),
		head:  h * el,
	}
	if !c.Tied() {
		p.head += matrix(v, h)
	}
	return p
}

// LayerKVBytes is the KV cache of layer i after context tokens. A full-attention cache grows in
// 256-position chunks. A sliding-window layer's rotating cache (Gemma 3's local layers) holds its
// window while decoding, but right after a prefill chunk it holds window-1 old positions plus the
// whole chunk (as mlx-lm's does), and that peak is what must fit.
func LayerKVBytes(c *model.Config, dt mlx.DType, context, i int) int64 {
	per := 2 * int64(c.NumKVHeads*c.KVHeadDim()) * int64(dt.Size())
	if w := c.LayerWindow(i); w > 0 {
		return per * int64(min(context, w-1+min(context, PrefillChunk)))
	}
	return per * int64((context+255)/256*256)
}

// overhead is the activations of one prefill chunk (attention scores dominate) plus logits, and
// the runtime.
func overhead(c *model.Config, dt mlx.DType, context int) int64 {
	el := int64(dt.Size())
	chunk := int64(min(context, PrefillChunk))
	act := int64(c.NumHeads)*chunk*chunk*4 + 4*chunk*int64(max(c.IntermediateSize, c.HiddenSize))*el + 2*int64(c.VocabSize)*4
	return act + 256<<20
}

// BytesPerToken is the weight bytes one decode step reads: every matrix once, except that only one
// row of an untied embedding table is gathered.
func BytesPerToken(c *model.Config, dt mlx.DType) int64 {
	b := EstimateMemory(c, dt, 0).Weights
	if !c.Tied() {
		el := int64(dt.Size())
		emb := int64(c.VocabSize) * int64(c.HiddenSize) * el
		if q := c.Quantization; q != nil {
			emb = int64(c.VocabSize)*int64(c.HiddenSize)*int64(q.Bits)/8 + 2*int64(c.VocabSize)*int64(c.HiddenSize/q.GroupSize)*el
		}
		b -= emb
	}
	return b
}

// SpecMemory predicts the memory of speculative decoding in one process: the target's and the
// draft's weights and KV caches for context tokens each, and the larger of their runtime
// overheads, since the two models run one after the other.
func SpecMemory(target, draft *model.Config, dt mlx.DType, context int) Estimate {
	t, d := EstimateMemory(target, dt, context), EstimateMemory(draft, dt, context)
	return Estimate{Weights: t.Weights + d.Weights, KVCache: t.KVCache + d.KVCache, Overhead: max(t.Overhead, d.Overhead)}
}

// CheckMemory refuses a model that needs more than SafetyFactor of RAM (detected when ram is 0).
func CheckMemory(c *model.Config, dt mlx.DType, context int, ram int64) error {
	return checkFits(EstimateMemory(c, dt, context), "", dt, context, ram)
}

// CheckSpecMemory refuses a target and a draft model that together (SpecMemory) need more than
// SafetyFactor of RAM (detected when ram is 0): each may fit alone while both do not.
func CheckSpecMemory(target, draft *model.Config, dt mlx.DType, context int, ram int64) error {
	return checkFits(SpecMemory(target, draft, dt, context), "target and draft together", dt, context, ram)
}

// checkFits refuses e beyond SafetyFactor of ram; what, when set, says what e covers.
func checkFits(e Estimate, what string, dt mlx.DType, context int, ram int64) error {
	if ram == 0 {
		var err error
		if ram, err = SystemRAM(); err != nil {
			return nil // cannot tell: let MLX try
		}
	}
	limit := int64(float64(ram) * SafetyFactor)
	if e.Total() <= limit {
		return nil
	}
	advice := "use a quantized checkpoint (hippo synth --bits 4, or an mlx-community 4-bit model), a shorter context, or split it with --mode pipeline --stages 2"
	if what != "" {
		advice = "use a smaller or quantized draft, --drafter lookup (no draft model), a shorter context, or a quantized target"
		what += " "
	}
	if dt == mlx.Float32 {
		advice = "use --dtype bf16 (float32 doubles a bf16 checkpoint), " + advice
	}
	return fmt.Errorf("%w: %sneeds %s (weights %s + KV cache %s for %d tokens + runtime %s), %s usable of %s RAM: %s",
		ErrMemory, what, FormatBytes(e.Total()), FormatBytes(e.Weights), FormatBytes(e.KVCache), context,
		FormatBytes(e.Overhead), FormatBytes(limit), FormatBytes(ram), advice)
}

// SystemRAM returns the machine's physical memory.
func SystemRAM() (int64, error) {
	if runtime.GOOS == "darwin" {
		out, err := exec.Command("sysctl", "-n", "hw.memsize").Output()
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	}
	return meminfo("MemTotal")
}

// AvailableRAM returns the memory this machine can give a new process without swapping: Linux's
// MemAvailable, or on macOS the free, inactive and speculative pages vm_stat reports (pages
// the kernel reclaims without writing them out).
func AvailableRAM() (int64, error) {
	if runtime.GOOS == "darwin" {
		out, err := exec.Command("vm_stat").Output()
		if err != nil {
			return 0, err
		}
		return parseVMStat(string(out))
	}
	return meminfo("MemAvailable")
}

// parseVMStat reads vm_stat's output: "Mach Virtual Memory Statistics: (page size of 16384
// bytes)", then "Pages free:   12345." lines.
func parseVMStat(out string) (int64, error) {
	lines := strings.Split(out, "\n")
	var page int64
	_, rest, _ := strings.Cut(lines[0], "page size of ")
	if _, err := fmt.Sscanf(rest, "%d", &page); err != nil || page <= 0 {
		return 0, fmt.Errorf("vm_stat: no page size in %q", lines[0])
	}
	var pages int64
	for _, l := range lines[1:] {
		name, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(name) {
		case "Pages free", "Pages inactive", "Pages speculative":
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), "."), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("vm_stat: %s: %w", name, err)
			}
			pages += n
		}
	}
	return pages * page, nil
}

// ParseBytes reads sizes such as "16GB", "16G", "512MiB" or a plain byte count. Decimal (GB) and
// binary (GiB, G) units are both accepted; G alone means GiB, as RAM is sold in binary sizes.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10},
		{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional unit, like 16GB or 512MiB", s)
	}
	return int64(v * mult), nil
}

// FormatBytes prints a size in GiB, MiB or KiB.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
}

// meminfo returns the byte count of key (e.g. "MemAvailable") in Linux's /proc/meminfo.
func meminfo(key string) (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == key+":" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("%s not found in /proc/meminfo", key)
}
