package safetensors

import "fmt"

// FileSize is the size in bytes of the file Create would write for tensors and metadata: the
// length prefix, the padded header and the data. It lets callers size a checkpoint without
// writing it.
func FileSize(tensors []TensorInfo, metadata map[string]string) (int64, error) {
	infos, err := plan(tensors)
	if err != nil {
		return 0, fmt.Errorf("safetensors: size: %w", err)
	}
	header, err := encodeHeader(infos, metadata)
	if err != nil {
		return 0, fmt.Errorf("safetensors: size: %w", err)
	}
	size := 8 + int64(len(header))
	for _, t := range infos {
		size += t.Length
	}
	return size, nil
}
