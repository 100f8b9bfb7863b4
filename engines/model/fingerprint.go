package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// Fingerprint identifies a checkpoint's contents cheaply: a hash of config.json and, for every
// safetensors file, its size and first 1 MiB (the header and the start of the data). Pipeline
// stages compare fingerprints in their handshake to refuse mixing different checkpoints.
func Fingerprint(dir string) (string, error) {
	h := sha256.New()
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	h.Write(b)
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	sort.Strings(files)
	for _, f := range files {
		fd, err := os.Open(f)
		if err != nil {
			return "", fmt.Errorf("model: fingerprint: %w", err)
		}
		fi, _ := fd.Stat()
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), fi.Size())
		io.Copy(h, io.LimitReader(fd, 1<<20))
		fd.Close()
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
