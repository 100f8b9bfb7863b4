package tokenizer

import (
	"strings"
	"testing"
)

// BenchmarkEncode encodes the multi-line corpus texts (Go source and multilingual
// samples) and reports tokens per second.
func BenchmarkEncode(b *testing.B) {
	_, texts := corpus(b)
	text := strings.Join(texts, "\n")
	for _, name := range models {
		b.Run(name, func(b *testing.B) {
			tok := loadModel(b, name)
			n := len(tok.Encode(text, true))
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			for b.Loop() {
				tok.Encode(text, true)
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkEncodeParallel is BenchmarkEncode with Encode called from GOMAXPROCS
// goroutines, the way a server tokenizes concurrent requests.
func BenchmarkEncodeParallel(b *testing.B) {
	_, texts := corpus(b)
	for _, name := range models {
		b.Run(name, func(b *testing.B) {
			tok := loadModel(b, name)
			n := 0
			for _, text := range texts {
				n += len(tok.Encode(text, true))
			}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					tok.Encode(texts[i%len(texts)], true)
				}
			})
			b.ReportMetric(float64(n)/float64(len(texts))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkDecode decodes the encoded corpus texts.
func BenchmarkDecode(b *testing.B) {
	_, texts := corpus(b)
	text := strings.Join(texts, "\n")
	for _, name := range models {
		b.Run(name, func(b *testing.B) {
			tok := loadModel(b, name)
			ids := tok.Encode(text, true)
			b.ResetTimer()
			for b.Loop() {
				tok.Decode(ids, false)
			}
			b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkLoad reads each tokenizer from disk.
func BenchmarkLoad(b *testing.B) {
	for _, name := range models {
		b.Run(name, func(b *testing.B) {
			dir := modelDir(b, name)
			for b.Loop() {
				if _, err := Load(dir); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
