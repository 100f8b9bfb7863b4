package mlx

import (
	"context"
	"fmt"
	"runtime"
	"sync"
)

// Worker runs functions on one locked OS thread, so that every MLX call shares the same default
// stream. Do may be called from any goroutine; calls run one at a time in arrival order.
//
// Functions of different workers in one process take turns too: the scope stack and the sticky
// error are per process, so two workers computing at once would free each other's arrays. (A
// server with several models, or a speculative target and its draft model, each have a worker.)
type Worker struct {
	jobs chan job
	done chan struct{}
	// alone skips the process-wide turn (NewOverlappingWorker).
	alone bool
}

// turn is held while a worker's function runs.
var turn sync.Mutex

type job struct {
	fn  func() error
	res chan error
}

// NewWorker starts a worker thread. Close stops it.
func NewWorker() *Worker { return newWorker(false) }

// NewOverlappingWorker starts a worker whose functions do not take the process-wide turn: for MLX
// work that may block indefinitely (a ring receive from a silent peer) and that its caller never
// runs at the same time as other MLX work in the process. Blocking while holding the turn would
// stall every other worker, even the one that must close the stage.
func NewOverlappingWorker() *Worker { return newWorker(true) }

func newWorker(alone bool) *Worker {
	w := &Worker{jobs: make(chan job), done: make(chan struct{}), alone: alone}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		close(ready)
		for j := range w.jobs {
			if !w.alone {
				turn.Lock()
			}
			err := run(j.fn)
			if !w.alone {
				turn.Unlock()
			}
			j.res <- err
		}
		close(w.done)
	}()
	<-ready
	return w
}

func run(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("mlx: panic on the MLX thread: %v", r)
		}
	}()
	return fn()
}

// Do runs fn on the worker's thread and returns its error. If ctx ends before fn starts, Do
// returns ctx.Err() without running it; once started, fn runs to completion (it should watch ctx
// itself between steps).
func (w *Worker) Do(ctx context.Context, fn func() error) error {
	j := job{fn: fn, res: make(chan error, 1)}
	select {
	case w.jobs <- j:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-j.res
}

// Close stops the worker after the running function returns. Do must not be called afterwards.
func (w *Worker) Close() {
	close(w.jobs)
	<-w.done
}
