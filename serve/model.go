package serve

import (
	"context"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// Generator runs one generation, calling emit for each token as it is produced. Calls may come
// from many goroutines; the server never overlaps two calls on one Generator unless it implements
// Batching. emit may run on another goroutine (the engine's MLX thread) and must not call the
// Generator; an error from emit stops generation and is returned. emit never writes to the client
// itself (it hands the token to the request's writer and may block while that writer's buffer is
// full, at most until ctx ends). Generate must return soon after ctx ends. *engines.Engine and
// *engines.Batcher implement it.
type Generator interface {
	Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error)
}

// Batching is the optional ability of a Generator to run several generations at once (continuous
// batching): the server overlaps up to MaxBatch calls of Generate and queues the others.
type Batching interface {
	MaxBatch() int
}

var (
	_ Generator = (*engines.Engine)(nil)
	_ Generator = (*engines.Batcher)(nil)
	_ Batching  = (*engines.Batcher)(nil)
)

// Occupier is an optional ability of a Generator that decodes several sequences at once
// (continuous batching). The server reads it at every /metrics scrape, from any goroutine, as
// hippo_batch_size, hippo_kv_cache_bytes and hippo_kv_cache_capacity_bytes; for a Generator
// without it the server counts its own calls instead.
type Occupier interface {
	// Occupancy returns the sequences decoding now, the KV cache bytes they hold, and the KV
	// cache bytes the generator may hold at most.
	Occupancy() (running int, kvBytes, kvCapacity int64)
}

// Tokenizer is what the server needs of a model's tokenizer. Its methods may be called from many
// goroutines at once.
type Tokenizer interface {
	// Encode turns text into ids, with the tokenizer's special tokens (BOS) when addSpecial.
	Encode(text string, addSpecial bool) []int
	// ApplyChatTemplate renders a conversation with the model's chat template.
	ApplyChatTemplate(msgs []tokenizer.Message, addGenerationPrompt bool) (string, error)
	// EOS lists the end-of-sequence ids; their text is never sent to clients.
	EOS() []int
	// VocabSize bounds the token ids a client may send as a prompt.
	VocabSize() int
	// NewDecoder starts decoding one stream of ids.
	NewDecoder() Decoder
}

// Decoder turns a stream of ids into text (see tokenizer.StreamDecoder). It is for one goroutine.
type Decoder interface {
	// Add returns the text id completes ("" while a multi-byte character is incomplete).
	Add(id int) string
	// Flush returns the text still held back.
	Flush() string
}

// Model is one served model.
type Model struct {
	// ID is the name clients send as "model".
	ID        string
	Generator Generator
	Tokenizer Tokenizer
	// Context is the longest prompt plus completion the model accepts (default 4096).
	Context int
	// MemoryBytes is what the model's weights take (reported as hippo_model_memory_bytes).
	MemoryBytes int64
	// Created is reported by /v1/models (default: when the server was made).
	Created time.Time
	// KVBytes, when set, is the KV cache a sequence of tokens positions holds: the server reports
	// it as KV occupancy for a generator that does not report occupancy itself.
	KVBytes func(tokens int) int64
}

// EngineTokenizer adapts a real tokenizer to Tokenizer.
func EngineTokenizer(t *tokenizer.Tokenizer) Tokenizer { return engineTokenizer{t} }

type engineTokenizer struct{ *tokenizer.Tokenizer }

var (
	_ Tokenizer = engineTokenizer{}
	_ Decoder   = (*tokenizer.StreamDecoder)(nil)
)

func (t engineTokenizer) NewDecoder() Decoder { return t.NewStreamDecoder() }

// GeneratorModel describes an opened configuration as a served model called id, with the
// context its memory guard planned for.
func GeneratorModel(id string, g launch.Generator) Model {
	info := g.Info()
	return Model{ID: id, Generator: g, Tokenizer: EngineTokenizer(g.Tokenizer()), Context: info.Context(),
		MemoryBytes: info.WeightBytes, KVBytes: info.KVBytes}
}
