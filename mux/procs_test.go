//go:build linux

package mux

import (
	"log/slog"
	"runtime"
	"testing"
)

func TestReserveProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name      string
		env       string
		procs     int // GOMAXPROCS before
		reserve   int // loops that start serving
		wantProcs int
	}{
		{"one P for one loop", "", 1, 1, 2},
		{"enough already", "", 5, 2, 5},
		{"equal to the loops", "", 2, 2, 3},
		{"the environment decides", "1", 1, 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tt.env)
			runtime.GOMAXPROCS(tt.procs)
			reserveProcs(tt.reserve, log)
			defer releaseProcs(tt.reserve)
			if got := runtime.GOMAXPROCS(0); got != tt.wantProcs {
				t.Errorf("GOMAXPROCS %d with %d loops serving, want %d", got, tt.reserve, tt.wantProcs)
			}
		})
	}
	t.Run("counts every server's loops and never lowers", func(t *testing.T) {
		t.Setenv("GOMAXPROCS", "")
		runtime.GOMAXPROCS(1)
		reserveProcs(2, log)
		reserveProcs(3, log)
		if got := runtime.GOMAXPROCS(0); got != 6 {
			t.Errorf("GOMAXPROCS %d with 2+3 loops serving, want 6", got)
		}
		releaseProcs(3)
		releaseProcs(2)
		reserveProcs(1, log)
		defer releaseProcs(1)
		if got := runtime.GOMAXPROCS(0); got != 6 {
			t.Errorf("GOMAXPROCS lowered to %d", got)
		}
	})
}
