package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spinner is a running cmd/spinner pinned to the server core, and the
// counter it publishes (see cmd/spinner).
type spinner struct {
	p   *process
	mem []byte
}

// spinnerCalibration is how long the spinner's rate on the idle server core
// is measured before each cross-check run.
const spinnerCalibration = 500 * time.Millisecond

// startSpinner starts the spinner on the server core and maps its counter.
func (h *harness) startSpinner() (*spinner, error) {
	path := filepath.Join(h.opts.work, "spinner.count")
	p, err := spawn(h.opts.work, "spinner", "", cpuServer, h.binary("spinner"), "-counter", path)
	if err != nil {
		return nil, err
	}
	s := &spinner{p: p}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.exited() {
			return nil, fmt.Errorf("spinner exited: %s", p.tail())
		}
		if s.mem, err = mapShared(path); err == nil && s.count() > 0 {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("spinner did not start counting: %v %s", err, p.tail())
		}
	}
}

// mapShared maps the first page of an existing file read-only.
func mapShared(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() < int64(os.Getpagesize()) {
		return nil, fmt.Errorf("%s not ready", path)
	}
	return unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ, unix.MAP_SHARED)
}

// count returns the spinner's iterations so far.
func (s *spinner) count() uint64 {
	if s.mem == nil {
		return 0
	}
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&s.mem[0])))
}

// stop ends the spinner and unmaps its counter.
func (s *spinner) stop() {
	s.p.stop()
	if s.mem != nil {
		unix.Munmap(s.mem)
		s.mem = nil
	}
}

// rateOver returns the spinner's iterations per second over d.
func (s *spinner) rateOver(d time.Duration) float64 {
	c0, t0 := s.count(), time.Now()
	time.Sleep(d)
	c1, t1 := s.count(), time.Now()
	return float64(c1-c0) / t1.Sub(t0).Seconds()
}

// spinnerBusy returns the CPU time, in seconds, that other work took from
// a spinner which did iters iterations in elapsed seconds and does idleRate
// per second when nothing else runs: the capacity it lost.
func spinnerBusy(iters uint64, elapsed, idleRate float64) float64 {
	if idleRate <= 0 || elapsed <= 0 {
		return 0
	}
	return min(max(elapsed-float64(iters)/idleRate, 0), elapsed)
}
