package main

import (
	"math"
	"testing"
	"time"
)

const procStat = `cpu  175954 0 41646 635975 1072 0 1132 532 0 0
cpu0 87322 0 20521 319367 229 0 459 274 0 0
cpu1 88631 0 21124 316608 843 0 673 257 0 0
intr 12345 0 0
ctxt 999
`

func TestParseProcStat(t *testing.T) {
	cpus, err := parseProcStat(procStat)
	if err != nil {
		t.Fatal(err)
	}
	want := cpuStat{User: 88631, System: 21124, Idle: 316608, IOWait: 843, SoftIRQ: 673, Steal: 257}
	if len(cpus) != 2 || cpus[1] != want {
		t.Fatalf("parseProcStat = %+v, want cpu1 %+v", cpus, want)
	}
	if got := cpus[1].sampled(); got != 88631+21124+673 {
		t.Errorf("sampled = %d", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3\n", "cpuX 1 2 3 4 5 6 7 8\n", "cpu0 1 2 3 4 5 6 7 x\n"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) did not fail", bad)
		}
	}
}

func TestBetween(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := cpuSample{At: t0, CPUs: []cpuStat{{}, {User: 100, Idle: 1000, IOWait: 10, SoftIRQ: 5, Steal: 2}}}
	// Two seconds later: 50 ticks idle, 5 iowait, 10 steal, and only 20
	// ticks of busy fields sampled, though the core worked 2 − 0.55 − 0.10 s.
	b := cpuSample{At: t0.Add(2 * time.Second), CPUs: []cpuStat{{}, {User: 115, Idle: 1050, IOWait: 15, SoftIRQ: 10, Steal: 12}}}
	got := between(a, b, 1)
	want := coreTime{Elapsed: 2, Busy: 1.35, Sampled: 0.20, Steal: 0.10}
	if math.Abs(got.Busy-want.Busy) > 1e-9 || got.Elapsed != want.Elapsed || math.Abs(got.Sampled-want.Sampled) > 1e-9 || math.Abs(got.Steal-want.Steal) > 1e-9 {
		t.Errorf("between = %+v, want %+v", got, want)
	}
	// Idle rounded up past the elapsed time: busy is 0, not negative.
	c := cpuSample{At: t0.Add(100 * time.Millisecond), CPUs: []cpuStat{{}, {User: 100, Idle: 1011, IOWait: 10, SoftIRQ: 5, Steal: 2}}}
	if got := between(a, c, 1); got.Busy != 0 {
		t.Errorf("between with idle > elapsed: busy = %v, want 0", got.Busy)
	}
	if got := between(a, b, 5); got != (coreTime{}) {
		t.Errorf("between for a missing CPU = %+v", got)
	}
}

func TestSpinnerBusy(t *testing.T) {
	tests := []struct {
		iters             uint64
		elapsed, idleRate float64
		want              float64
	}{
		{iters: 1000, elapsed: 2, idleRate: 1000, want: 1}, // half the capacity lost
		{iters: 2000, elapsed: 2, idleRate: 1000, want: 0}, // nothing lost
		{iters: 2100, elapsed: 2, idleRate: 1000, want: 0}, // faster than calibrated: 0, not negative
		{iters: 0, elapsed: 2, idleRate: 1000, want: 2},    // all lost
		{iters: 10, elapsed: 2, idleRate: 0, want: 0},      // no calibration
	}
	for _, tt := range tests {
		if got := spinnerBusy(tt.iters, tt.elapsed, tt.idleRate); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("spinnerBusy(%d, %v, %v) = %v, want %v", tt.iters, tt.elapsed, tt.idleRate, got, tt.want)
		}
	}
}
