//go:build linux

package mux

import (
	"log/slog"
	"os"
	"runtime"
	"sync"
)

// An idle loop keeps its thread in epoll_wait, in a system call. When no P
// is idle, the runtime's monitor takes the P of any thread that has been in a
// system call for 20 µs, and while it keeps finding such Ps it wakes every
// 20 µs itself: a lightly loaded server, whose loops wait between every few
// datagrams, then spends about a fifth of its CPU on that
// (benchmarks/README.md). One P more than the loops that are serving leaves
// one idle and the loops' Ps alone.

// serving counts the loops of every Server that is serving.
var serving struct {
	sync.Mutex
	loops int
}

// reserveProcs counts n more loops as serving and raises GOMAXPROCS above
// their number unless the GOMAXPROCS environment variable fixes it. It never
// lowers GOMAXPROCS: that stops the world, and the Ps do no harm once idle.
func reserveProcs(n int, log *slog.Logger) {
	serving.Lock()
	defer serving.Unlock()
	serving.loops += n
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if was := runtime.GOMAXPROCS(0); was <= serving.loops {
		runtime.GOMAXPROCS(serving.loops + 1)
		log.Debug("raised GOMAXPROCS one above the serving loops", "was", was, "now", serving.loops+1)
	}
}

// releaseProcs counts n loops as no longer serving.
func releaseProcs(n int) {
	serving.Lock()
	serving.loops -= n
	serving.Unlock()
}
