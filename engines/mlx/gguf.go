package mlx

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// LoadGGUF reads the tensors of a GGUF file with MLX's own loader (mlx::core::load_gguf). Tensors
// that MLX maps to its affine quantization (GGUF Q4_0, Q4_1 and Q8_0, group size 32) come back as
// three arrays named NAME.weight (packed uint32), NAME.scales and NAME.biases; F32, F16 and BF16
// tensors as one array under their GGUF name. The arrays belong to the innermost open Scope, or to
// the caller when none is open. MLX reads the data lazily from the file.
//
// MLX does not report the GGUF type of each tensor: read the header (package gguf) to reject
// types it does not map before calling this.
func LoadGGUF(path string) (map[string]Array, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var g C.hp_gguf
	if C.hp_gguf_load(&g, cpath) != 0 {
		return nil, lastError("load gguf " + path)
	}
	defer C.hp_gguf_free(g)
	n := int(C.hp_gguf_count(g))
	out := make(map[string]Array, n)
	for i := 0; i < n; i++ {
		name := C.GoString(C.hp_gguf_name(g, C.int(i)))
		var h C.hp_array
		if C.hp_gguf_array(&h, g, C.int(i)) != 0 {
			if len(scopes) == 0 { // otherwise the open scope owns and frees them
				for _, a := range out {
					a.Free()
				}
			}
			return nil, lastError(fmt.Sprintf("load gguf %s: tensor %s", path, name))
		}
		out[name] = track(h)
	}
	return out, nil
}
