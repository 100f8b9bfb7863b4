package safetensors

import "strings"

// DType is a tensor element type as spelled in a safetensors header ("F32", "BF16", ...).
type DType string

// The element types Hippo reads and writes: every byte-sized type of the reference safetensors
// library. The sub-byte types F4, F6_E2M3 and F6_E3M2 are rejected with errors.ErrUnsupported.
const (
	BOOL        DType = "BOOL"
	U8          DType = "U8"
	I8          DType = "I8"
	F8_E5M2     DType = "F8_E5M2"
	F8_E4M3     DType = "F8_E4M3"
	F8_E8M0     DType = "F8_E8M0"
	F8_E4M3FNUZ DType = "F8_E4M3FNUZ"
	F8_E5M2FNUZ DType = "F8_E5M2FNUZ"
	I16         DType = "I16"
	U16         DType = "U16"
	F16         DType = "F16"
	BF16        DType = "BF16"
	I32         DType = "I32"
	U32         DType = "U32"
	F32         DType = "F32"
	C64         DType = "C64"
	F64         DType = "F64"
	I64         DType = "I64"
	U64         DType = "U64"
)

// dtypes lists the supported types in the order of the reference library's Dtype enum, which is
// the order its writer uses (descending) to keep every tensor aligned to its element size.
var dtypes = []struct {
	dtype DType
	size  int
}{
	{BOOL, 1}, {U8, 1}, {I8, 1}, {F8_E5M2, 1}, {F8_E4M3, 1}, {F8_E8M0, 1}, {F8_E4M3FNUZ, 1},
	{F8_E5M2FNUZ, 1}, {I16, 2}, {U16, 2}, {F16, 2}, {BF16, 2}, {I32, 4}, {U32, 4}, {F32, 4},
	{C64, 8}, {F64, 8}, {I64, 8}, {U64, 8},
}

// subByte are the reference library's types whose elements are smaller than a byte; Size cannot
// express them, so they are refused with a clear error instead of being called unknown.
var subByte = map[DType]bool{"F4": true, "F6_E2M3": true, "F6_E3M2": true}

// Size returns the size of one element in bytes, or 0 if d is not a supported type.
func (d DType) Size() int {
	for _, t := range dtypes {
		if t.dtype == d {
			return t.size
		}
	}
	return 0
}

// rank is d's position in the reference library's Dtype enum, or -1 if d is not supported.
func (d DType) rank() int {
	for i, t := range dtypes {
		if t.dtype == d {
			return i
		}
	}
	return -1
}

// knownDTypes is the list of supported types for error messages.
func knownDTypes() string {
	names := make([]string, len(dtypes))
	for i, t := range dtypes {
		names[i] = string(t.dtype)
	}
	return strings.Join(names, ", ")
}
