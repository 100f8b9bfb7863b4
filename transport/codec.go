package transport

import (
	"encoding/binary"
	"fmt"
	"math"
)

// decoder walks a payload. The first failure sticks: later reads return zero values, and done
// reports the failure, so message decoders read straight through and check once.
type decoder struct {
	what string // message name, for errors
	b    []byte
	off  int
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("transport: decode %s: %s: %w", d.what, fmt.Sprintf(format, args...), ErrBadFrame)
	}
}

// take returns the next n bytes, aliasing the payload.
func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail("truncated at byte %d (need %d more, have %d)", d.off, n, len(d.b)-d.off)
		return nil
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// flag reads a boolean byte; anything but 0 or 1 is garbage.
func (d *decoder) flag(field string) bool {
	v := d.u8()
	if v > 1 {
		d.fail("%s is %d, want 0 or 1", field, v)
	}
	return v == 1
}

// str reads a string with a 16-bit length prefix.
func (d *decoder) str() string {
	n := int(d.u16())
	return string(d.take(n))
}

// count reads a 32-bit element count and checks that count elements of size bytes each fit in
// what is left, before anyone allocates for them.
func (d *decoder) count(field string, size int) int {
	n := d.u32()
	if d.err == nil && uint64(n)*uint64(size) > uint64(len(d.b)-d.off) {
		d.fail("%s count %d needs %d bytes, only %d left", field, n, uint64(n)*uint64(size), len(d.b)-d.off)
		return 0
	}
	return int(n)
}

// int31 reads a 32-bit value that must fit a non-negative int32.
func (d *decoder) int31(field string) int {
	v := d.u32()
	if v > math.MaxInt32 {
		d.fail("%s %d is out of range", field, v)
		return 0
	}
	return int(v)
}

// done reports the first failure, or trailing bytes after a complete message.
func (d *decoder) done() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d trailing bytes after the message", len(d.b)-d.off)
	}
	return d.err
}

func appendStr(b []byte, s string, field string) ([]byte, error) {
	if len(s) > math.MaxUint16 {
		return b, fmt.Errorf("transport: encode: %s is %d bytes, limit %d: %w", field, len(s), math.MaxUint16, ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...), nil
}

func appendFlag(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// checkU31 rejects values that do not fit the wire's non-negative 31-bit fields.
func checkU31(field string, v int) error {
	if v < 0 || v > math.MaxInt32 {
		return fmt.Errorf("transport: encode: %s %d is out of range [0, %d]: %w", field, v, math.MaxInt32, ErrBadFrame)
	}
	return nil
}

// checkU16 rejects values that do not fit the wire's 16-bit fields.
func checkU16(field string, v int) error {
	if v < 0 || v > math.MaxUint16 {
		return fmt.Errorf("transport: encode: %s %d is out of range [0, %d]: %w", field, v, math.MaxUint16, ErrBadFrame)
	}
	return nil
}
