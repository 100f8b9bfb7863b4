package transport

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"
)

// Sealing. After the two clear handshake frames (Hello, HelloAck) every frame's payload is
// sealed with AES-256-GCM; the 28-byte header, sent in the clear, is the additional data, so
// neither header nor payload can be altered unnoticed. Each direction has its own key, derived
// with HKDF-SHA256 from the shared secret, both handshake nonces and the clear handshake
// frames, so keys are fresh for every connection. The GCM nonce is the count of frames already
// sent in that direction: the receiver expects exactly the next count, so a replayed,
// reordered, dropped or injected frame fails to open, as does one that was altered or
// truncated (its tag no longer matches).
//
// Without a secret the keys come from the nonces alone, which both ends sent in the clear:
// the framing still detects corruption, and desynchronisation from bugs, but it protects
// nothing against anyone who can see or change the traffic. That is only acceptable on
// loopback, where the command line allows it.

// Overhead is the bytes sealing adds to each payload (the GCM tag).
const Overhead = 16

// maxHandshakePayload bounds the payload of a frame read before the peer has proved anything:
// a stranger cannot make a rank buffer more than this.
const maxHandshakePayload = 4 << 10

const (
	infoDialer   = "hippo transport v3 dialer to listener"
	infoListener = "hippo transport v3 listener to dialer"
)

// sealer seals or opens one direction of a connection. Frames in one direction never overlap
// (writes hold Conn.wmu; reads never overlap), so the counter needs no lock.
type sealer struct {
	aead  cipher.AEAD
	count uint64
	nonce [12]byte
	// spent, when set (only by the seal-cost benchmark), adds up the time spent sealing and
	// opening.
	spent *atomic.Int64
}

// sessionKeys derives the dialer-to-listener and listener-to-dialer sealers of a connection.
func sessionKeys(secret string, hello, ack []byte) (d2l, l2d *sealer, err error) {
	h := sha256.New()
	h.Write(hello)
	h.Write(ack)
	salt := h.Sum(nil)
	prk, err := hkdf.Extract(sha256.New, []byte(secret), salt)
	if err != nil {
		return nil, nil, err
	}
	mk := func(info string) (*sealer, error) {
		key, err := hkdf.Expand(sha256.New, prk, info, 32)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		return &sealer{aead: aead}, nil
	}
	if d2l, err = mk(infoDialer); err != nil {
		return nil, nil, fmt.Errorf("transport: derive session keys: %w", err)
	}
	if l2d, err = mk(infoListener); err != nil {
		return nil, nil, fmt.Errorf("transport: derive session keys: %w", err)
	}
	return d2l, l2d, nil
}

func (s *sealer) next() []byte {
	binary.BigEndian.PutUint64(s.nonce[4:], s.count)
	s.count++
	return s.nonce[:]
}

// seal encrypts the payload of the frame in b (header and n payload bytes) in place, appending
// the tag and fixing the header's length, and returns the grown frame.
func (s *sealer) seal(b []byte, n int) []byte {
	if cap(b)-len(b) < Overhead {
		nb := make([]byte, len(b), len(b)+Overhead)
		copy(nb, b)
		b = nb
	}
	binary.LittleEndian.PutUint32(b[24:], uint32(n+Overhead))
	hdr, payload := b[:HeaderSize], b[HeaderSize:HeaderSize+n]
	var t0 time.Time
	if s.spent != nil {
		t0 = time.Now()
	}
	out := s.aead.Seal(payload[:0], s.next(), payload, hdr)
	if s.spent != nil {
		s.spent.Add(int64(time.Since(t0)))
	}
	return b[:HeaderSize+len(out)]
}

// open decrypts a sealed payload in place, authenticating it with the header it came with.
// It returns the frame number it expected and whether the frame opened.
func (s *sealer) open(hdr, payload []byte) ([]byte, uint64, bool) {
	want := s.count
	var t0 time.Time
	if s.spent != nil {
		t0 = time.Now()
	}
	out, err := s.aead.Open(payload[:0], s.next(), payload, hdr)
	if s.spent != nil {
		s.spent.Add(int64(time.Since(t0)))
	}
	if err != nil {
		return nil, want, false
	}
	return out, want, true
}
