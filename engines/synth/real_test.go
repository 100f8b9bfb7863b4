package synth

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/hippo-bench/hippo/engines/gguf"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestRealShapeMatchesFile: the shape a real model declares for memory checks is the one its GGUF
// file's metadata converts to.
func TestRealShapeMatchesFile(t *testing.T) {
	tokDir := filepath.Join(testenv.Root(t), ".cache", "tokenizers")
	for _, m := range RealModels {
		t.Run(m.Name, func(t *testing.T) {
			g, err := gguf.Open(RealFile(m, tokDir))
			if err != nil {
				t.Fatalf("%v (run just setup)", err)
			}
			cfg, err := gguf.ConfigOf(g)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(cfg)
			var file map[string]any
			json.Unmarshal(got, &file)
			for k, want := range m.Shape {
				wb, _ := json.Marshal(want)
				fb, _ := json.Marshal(file[k])
				if k == "quantization" {
					q := file[k].(map[string]any)
					fb, _ = json.Marshal(map[string]any{"group_size": q["group_size"], "bits": q["bits"]})
				}
				if string(fb) != string(wb) {
					t.Errorf("%s = %s in the file; Shape says %s", k, fb, wb)
				}
			}
		})
	}
}
