//go:build hippobench

package transport

import "sync/atomic"

// Unsealed returns o with sealing switched off after the handshake; both sides of a connection
// must use it. It exists only in builds with the hippobench tag, for the benchmark that measures
// what sealing costs a pipeline decode step: no ordinary build can send a frame in the clear.
func Unsealed(o Options) Options {
	o.plaintext = true
	return o
}

// TimeSealing returns o with the time this side spends sealing and opening frames added to total.
// It exists only in builds with the hippobench tag.
func TimeSealing(o Options, total *atomic.Int64) Options {
	o.sealTime = total
	return o
}
