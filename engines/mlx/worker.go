package mlx

import (
	"context"
	"fmt"
	"runtime"
)

// Worker runs functions on one locked OS thread, so that every MLX call shares the same default
// stream. Do may be called from any goroutine; calls run one at a time in arrival order.
type Worker struct {
	jobs chan job
	done chan struct{}
}

type job struct {
	fn  func() error
	res chan error
}

// NewWorker starts a worker thread. Close stops it.
func NewWorker() *Worker {
	w := &Worker{jobs: make(chan job), done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		close(ready)
		for j := range w.jobs {
			j.res <- run(j.fn)
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
