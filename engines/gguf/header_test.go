package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

// builder writes GGUF headers for tests.
type builder struct{ b bytes.Buffer }

func (w *builder) u32(v uint32) { binary.Write(&w.b, binary.LittleEndian, v) }
func (w *builder) u64(v uint64) { binary.Write(&w.b, binary.LittleEndian, v) }
func (w *builder) str(s string) { w.u64(uint64(len(s))); w.b.WriteString(s) }

type kv struct {
	key string
	typ uint32
	val any
}

type tensorSpec struct {
	name  string
	typ   Type
	shape []int // row-major
}

func header(kvs []kv, tensors []tensorSpec) []byte {
	var w builder
	w.b.WriteString("GGUF")
	w.u32(3)
	w.u64(uint64(len(tensors)))
	w.u64(uint64(len(kvs)))
	for _, e := range kvs {
		w.str(e.key)
		w.u32(e.typ)
		w.value(e.typ, e.val)
	}
	for _, t := range tensors {
		w.str(t.name)
		w.u32(uint32(len(t.shape)))
		for i := len(t.shape) - 1; i >= 0; i-- {
			w.u64(uint64(t.shape[i]))
		}
		w.u32(uint32(t.typ))
		w.u64(0)
	}
	return w.b.Bytes()
}

func (w *builder) value(typ uint32, v any) {
	switch typ {
	case tU32:
		w.u32(v.(uint32))
	case tI32:
		w.u32(uint32(v.(int32)))
	case tF32:
		w.u32(math.Float32bits(v.(float32)))
	case tBool:
		if v.(bool) {
			w.b.WriteByte(1)
		} else {
			w.b.WriteByte(0)
		}
	case tString:
		w.str(v.(string))
	case tArray:
		switch l := v.(type) {
		case []string:
			w.u32(tString)
			w.u64(uint64(len(l)))
			for _, s := range l {
				w.str(s)
			}
		case []int32:
			w.u32(tI32)
			w.u64(uint64(len(l)))
			for _, x := range l {
				w.u32(uint32(x))
			}
		}
	}
}

func TestReadHeader(t *testing.T) {
	data := header([]kv{
		{"general.architecture", tString, "llama"},
		{"llama.block_count", tU32, uint32(2)},
		{"llama.attention.layer_norm_rms_epsilon", tF32, float32(1e-5)},
		{"tokenizer.ggml.tokens", tArray, []string{"a", "b", "<|x|>"}},
		{"tokenizer.ggml.token_type", tArray, []int32{1, 1, 3}},
		{"tokenizer.ggml.add_bos_token", tBool, false},
	}, []tensorSpec{{"blk.0.attn_q.weight", Q4_1, []int{128, 64}}, {"output_norm.weight", F32, []int{64}}})
	g, err := Read(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := g.Architecture(); got != "llama" {
		t.Errorf("Architecture() = %q; want llama", got)
	}
	if got, ok := g.Int("llama.block_count"); !ok || got != 2 {
		t.Errorf("block_count = %d, %v; want 2", got, ok)
	}
	if got, _ := g.Float("llama.attention.layer_norm_rms_epsilon"); got != 1e-5 {
		t.Errorf("eps = %v; want 1e-05 exactly (shortest float32 decimal)", got)
	}
	if got, _ := g.Strings("tokenizer.ggml.tokens"); strings.Join(got, ",") != "a,b,<|x|>" {
		t.Errorf("tokens = %q", got)
	}
	if got, _ := g.Ints("tokenizer.ggml.token_type"); len(got) != 3 || got[2] != 3 {
		t.Errorf("token types = %v; want [1 1 3]", got)
	}
	if len(g.Tensors) != 2 || g.Tensors[0].Type != Q4_1 || g.Tensors[0].Shape[0] != 128 || g.Tensors[0].Shape[1] != 64 {
		t.Errorf("tensors = %+v; want blk.0.attn_q.weight Q4_1 [128 64] first", g.Tensors)
	}
}

func TestReadRejectsBadHeaders(t *testing.T) {
	good := header([]kv{{"general.architecture", tString, "llama"}}, []tensorSpec{{"x.weight", F32, []int{4}}})
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrFormat},
		{"wrong magic", append([]byte("GGML"), good[4:]...), ErrFormat},
		{"version 1", func() []byte { b := append([]byte{}, good...); b[4] = 1; return b }(), ErrUnsupported},
		{"truncated metadata", good[:30], ErrFormat},
		{"truncated tensors", good[:len(good)-3], ErrFormat},
		{"huge string", func() []byte {
			b := append([]byte{}, good[:24]...)
			return binary.LittleEndian.AppendUint64(b, 1<<40)
		}(), ErrFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tc.data))
			if !errors.Is(err, tc.want) {
				t.Errorf("Read = %v; want an error wrapping %v", err, tc.want)
			}
		})
	}
}

func TestPlanRejectsUnsupported(t *testing.T) {
	base := []kv{
		{"general.architecture", tString, "llama"},
		{"llama.embedding_length", tU32, uint32(64)},
		{"llama.block_count", tU32, uint32(1)},
		{"llama.attention.head_count", tU32, uint32(2)},
		{"llama.feed_forward_length", tU32, uint32(128)},
		{"llama.attention.layer_norm_rms_epsilon", tF32, float32(1e-5)},
		{"tokenizer.ggml.tokens", tArray, []string{"a", "b"}},
	}
	cases := []struct {
		name    string
		kvs     []kv
		tensors []tensorSpec
		want    []string // substrings of the error
	}{
		{"k-quant", base, []tensorSpec{{"blk.0.ffn_down.weight", 14, []int{64, 128}}}, []string{"blk.0.ffn_down.weight", "Q6_K"}},
		{"architecture", append([]kv{{"general.architecture", tString, "mamba"}}, base[1:]...), nil, []string{"mamba"}},
		{"unknown tensor", base, []tensorSpec{{"blk.0.attn_sinks.weight", F32, []int{2}}}, []string{"blk.0.attn_sinks.weight", "F32"}},
		{"layer beyond block_count", base, []tensorSpec{{"blk.3.attn_q.weight", Q8_0, []int{64, 64}}}, []string{"blk.3.attn_q.weight", "Q8_0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := Read(bytes.NewReader(header(tc.kvs, tc.tensors)))
			if err != nil {
				t.Fatal(err)
			}
			_, err = planLlama(g, 0)
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("planLlama = %v; want an error wrapping ErrUnsupported", err)
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
		})
	}
}

func FuzzRead(f *testing.F) {
	f.Add(header([]kv{{"general.architecture", tString, "llama"}, {"tokenizer.ggml.tokens", tArray, []string{"a"}}},
		[]tensorSpec{{"token_embd.weight", Q8_0, []int{2, 32}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := Read(bytes.NewReader(data))
		if err == nil && g == nil {
			t.Fatal("nil File without an error")
		}
	})
}
