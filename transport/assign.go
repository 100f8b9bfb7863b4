package transport

import (
	"encoding/binary"
	"fmt"
	"math"
)

// A driver that is given no split plans one from the memory each machine can offer:
//
//	D -> 1 -> ... -> N   Survey                       relayed down the chain
//	N -> ... -> 1 -> D   Memory{(stage, free bytes)}  each stage appends its own entry
//	D -> 1 -> ... -> N   Assign{split}                each stage loads its range, relays it
//	N -> ... -> 1 -> D   Reply{}                      once every later stage has loaded
//
// Both travel sealed inside the authenticated session, like every frame after the handshake.

// MaxStages bounds the stages a Memory or Assign message may describe, so a peer cannot make
// the decoder allocate for more than a pipeline can have.
const MaxStages = 1024

// MaxFreeMemory is the most free memory a stage may report (1 PiB): more than any machine has,
// so a larger figure comes from a broken or lying rank.
const MaxFreeMemory int64 = 1 << 50

// Survey asks each stage downstream how much memory it can offer. Its answer is a Memory.
// Payload: empty.
type Survey struct{}

// Type implements Message.
func (*Survey) Type() Type { return TypeSurvey }

// AppendBinary implements Message.
func (*Survey) AppendBinary(b []byte) ([]byte, error) { return b, nil }

// UnmarshalBinary implements Message.
func (*Survey) UnmarshalBinary(data []byte) error {
	d := decoder{what: "survey", b: data}
	return d.done()
}

// StageMemory is one stage's answer to a Survey.
type StageMemory struct {
	Stage int
	// Free is the memory, in bytes, the stage can give to its layers (its machine's available
	// memory, or what the rank was told to report).
	Free int64
}

// stageMemorySize is the encoded size of a StageMemory.
const stageMemorySize = 10

// Memory answers a Survey: the last stage fills in its entry and every stage on the way back
// appends its own. Payload: u16 count + (u16 stage, u64 free bytes).
type Memory struct {
	Stages []StageMemory
}

// Type implements Message.
func (*Memory) Type() Type { return TypeMemory }

// AppendBinary implements Message.
func (m *Memory) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Stages) > MaxStages {
		return b, fmt.Errorf("transport: encode memory: %d stages, limit %d: %w", len(m.Stages), MaxStages, ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Stages)))
	for _, s := range m.Stages {
		if err := checkU16("memory stage", s.Stage); err != nil {
			return b, err
		}
		if s.Free < 0 {
			return b, fmt.Errorf("transport: encode memory: stage %d has negative free memory %d: %w", s.Stage, s.Free, ErrBadFrame)
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(s.Stage))
		b = binary.LittleEndian.AppendUint64(b, uint64(s.Free))
	}
	return b, nil
}

// UnmarshalBinary implements Message. It checks the framing only (counts and sizes); what the
// figures mean is for the driver to judge.
func (m *Memory) UnmarshalBinary(data []byte) error {
	d := decoder{what: "memory", b: data}
	n := int(d.u16())
	if d.err == nil && n > MaxStages {
		d.fail("%d stages, limit %d", n, MaxStages)
	}
	if d.err == nil && n*stageMemorySize > len(data)-d.off {
		d.fail("stage count %d needs %d bytes, only %d left", n, n*stageMemorySize, len(data)-d.off)
	}
	stages := m.Stages[:0]
	for i := 0; i < n && d.err == nil; i++ {
		stage := int(d.u16())
		free := d.u64()
		if free > math.MaxInt64 {
			d.fail("stage %d reports %d bytes free, out of range", stage, free)
		}
		stages = append(stages, StageMemory{Stage: stage, Free: int64(free)})
	}
	if err := d.done(); err != nil {
		return err
	}
	m.Stages = stages
	return nil
}

// Range is a layer range [From, To) on the wire.
type Range struct{ From, To int }

// Assign tells every stage the pipeline's split: stage k loads Split[k] and relays the message
// to stage k+1; the answer (an empty Reply) comes back once every later stage has loaded.
// Payload: u16 count + (u32 from, u32 to).
type Assign struct {
	Split []Range
}

// Type implements Message.
func (*Assign) Type() Type { return TypeAssign }

// AppendBinary implements Message.
func (m *Assign) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Split) > MaxStages {
		return b, fmt.Errorf("transport: encode assign: %d stages, limit %d: %w", len(m.Split), MaxStages, ErrBadFrame)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.Split)))
	for _, r := range m.Split {
		if err := checkU31("assign from", r.From); err != nil {
			return b, err
		}
		if err := checkU31("assign to", r.To); err != nil {
			return b, err
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(r.From))
		b = binary.LittleEndian.AppendUint32(b, uint32(r.To))
	}
	return b, nil
}

// UnmarshalBinary implements Message. It checks the framing; whether the ranges tile the model
// is for the stage to judge, which knows the model.
func (m *Assign) UnmarshalBinary(data []byte) error {
	d := decoder{what: "assign", b: data}
	n := int(d.u16())
	if d.err == nil && n > MaxStages {
		d.fail("%d stages, limit %d", n, MaxStages)
	}
	if d.err == nil && n*8 > len(data)-d.off {
		d.fail("stage count %d needs %d bytes, only %d left", n, n*8, len(data)-d.off)
	}
	split := m.Split[:0]
	for i := 0; i < n && d.err == nil; i++ {
		split = append(split, Range{From: d.int31("from"), To: d.int31("to")})
	}
	if err := d.done(); err != nil {
		return err
	}
	m.Split = split
	return nil
}
