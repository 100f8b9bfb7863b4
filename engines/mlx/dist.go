package mlx

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Group is a set of MLX processes that exchange arrays through one of MLX's distributed
// backends. Hippo uses the ring backend: rank k holds one TCP connection to rank k-1 and one to
// rank k+1 (mod size), and Send and Recv work only between those neighbours.
//
// A process has at most one live group: MLX caches groups per process and its ring backend reads
// its configuration from the process environment (see GroupOptions). Free the previous group
// before making the next.
//
// Send and Recv are ops like any other: build and evaluate them on one Worker. That may be a
// Worker of their own rather than the one running the model: MLX (since 0.31.2) gives each thread
// its own default stream, and the ring sends on the calling thread's CPU stream, so a worker whose
// arrays never mix with another worker's is safe on MLX's side. On this package's side, the scope
// and error state is per process, so two workers must not run ops at the same time.
type Group struct {
	h          C.hp_group
	rank, size int
}

// GroupOptions configures NewGroup. The zero value joins a ring group described by the
// environment variables MLX_RANK and MLX_HOSTFILE, as `mlx.launch` sets them.
type GroupOptions struct {
	// Backend is MLX's backend name: "ring" when empty.
	Backend string
	// Hostfile is the ring's host list, a JSON list with one ["ip:port"] list per rank, in rank
	// order (rank k listens on its own address and connects to rank k+1's). When set, NewGroup
	// writes MLX_RANK=Rank and MLX_HOSTFILE=Hostfile into the process environment, where MLX reads
	// them; when empty, both must already be set.
	Hostfile string
	// Rank is this process's rank in Hostfile (ignored when Hostfile is empty).
	Rank int
}

// NewGroup joins a distributed group. It blocks until the backend is connected: for the ring,
// until every rank of the hostfile has joined (a rank that never starts keeps rank 0 waiting;
// the others give up after about 30 s of connection retries), so call it from a goroutine that
// can be abandoned. It fails, rather than falling back to a one-process group, when the backend
// is unavailable or misconfigured.
//
// NewGroup touches no array and none of this package's scope state, so it may run on any
// goroutine while a Worker does other MLX work (loading a model, say).
func NewGroup(o GroupOptions) (*Group, error) {
	if o.Backend == "" {
		o.Backend = "ring"
	}
	// The shim's error message is thread-local: stay on this thread until it is read.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	bk := C.CString(o.Backend)
	defer C.free(unsafe.Pointer(bk))
	var hf *C.char
	if o.Hostfile != "" {
		hf = C.CString(o.Hostfile)
		defer C.free(unsafe.Pointer(hf))
	}
	var h C.hp_group
	if C.hp_dist_init(&h, bk, C.int(o.Rank), hf) != 0 {
		return nil, fmt.Errorf("mlx: distributed %s: %s", o.Backend, C.GoString(C.hp_last_error()))
	}
	return &Group{h: h, rank: int(C.hp_dist_rank(h)), size: int(C.hp_dist_size(h))}, nil
}

// Rank is this process's rank in the group.
func (g *Group) Rank() int { return g.rank }

// Size is the number of processes in the group.
func (g *Group) Size() int { return g.size }

// Send returns an empty array whose evaluation sends a to rank dst (a ring neighbour). Nothing is
// sent until the caller evaluates the result with Eval; evaluation returns once the bytes are
// handed to the socket, and blocks while the peer does not read. Evaluate one Send or Recv per
// Eval call: the ring is a byte stream per neighbour, and MLX does not order independent ops
// evaluated together (two receives in one Eval may take each other's bytes). Like every op it must run on the
// MLX thread that owns a (a Worker), and it belongs to the open Scope or, with none, to the
// caller.
func (g *Group) Send(a Array, dst int) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result("distributed send", C.hp_dist_send(&h, g.h, a.h, C.int(dst)), h)
}

// Recv returns an array of the given dtype and shape whose evaluation receives it from rank src
// (a ring neighbour). The sender must send exactly that many bytes: the ring carries raw bytes
// with no framing, so a size mismatch desynchronises the connection. Evaluation blocks until
// the bytes arrive or the connection to src is lost (MLX's ring reports "connection to a peer
// was lost"); it cannot be interrupted. Ownership and threading are as for Send.
func (g *Group) Recv(dt DType, src int, shape ...int) Array {
	var buf [8]C.int
	var h C.hp_array
	st := C.hp_dist_recv(&h, g.h, ints(&buf, shape), C.int(len(shape)), C.int(dt), C.int(src))
	return result("distributed recv", st, h)
}

// Free releases the handle. MLX closes the group's connections once neither the handle nor an
// unevaluated Send or Recv array refers to it. Free is a no-op on a nil Group.
func (g *Group) Free() {
	if g != nil && g.h != nil {
		C.hp_dist_free(g.h)
		g.h = nil
	}
}
