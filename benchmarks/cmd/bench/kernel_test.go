package main

import (
	"encoding/json"
	"testing"
)

// fakeDaemon answers status with counters that a reading of the kernel's
// moves on at every call.
type fakeDaemon struct {
	polls, rx, tx uint64
	offloaded     int64
	calls         int
}

func (d *fakeDaemon) status() (daemonStatus, error) {
	d.calls++
	d.polls++
	var st daemonStatus
	b, _ := json.Marshal(map[string]any{
		"proxies":   map[string]any{benchListener: map[string]any{"offloaded": d.offloaded}},
		"fast_path": map[string]any{"rx_datagrams": d.rx, "tx_datagrams": d.tx, "polls": d.polls},
	})
	err := json.Unmarshal(b, &st)
	return st, err
}

func TestKernelMarks(t *testing.T) {
	d := &fakeDaemon{offloaded: 256}
	srv := &server{status: d.status}
	h := &harness{}
	from, err := h.kernelMark(srv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.calls != 1+kernelReadings {
		t.Errorf("%d status calls for a mark, want %d (it waits for %d readings)", d.calls, 1+kernelReadings, kernelReadings)
	}
	if again, _ := h.kernelMark(srv, from); again != from {
		t.Error("a mark with no generator run since was read again")
	}
	// A run: 1000 datagrams sent, 990 back; the kernel forwarded 995 and 990.
	h.gens, h.sent, h.received = 1, 1000, 990
	d.rx, d.tx = 995, 990
	last := from
	k := h.kernelSince(srv, from, &last)
	want := kernelRec{Offloaded: 256, Sent: 1000, Received: 990, Rx: 995, Tx: 990}
	if *k != want {
		t.Errorf("kernelSince = %+v, want %+v", *k, want)
	}
	if last == from || last.sent != 1000 {
		t.Errorf("the last mark was not moved on: %+v", last)
	}
	if s := k.rxShare(); s != 99.5 {
		t.Errorf("rxShare = %v, want 99.5", s)
	}
	// The daemon's status without a fast path is an error, not a share of 0.
	h.gens++
	srv.status = func() (daemonStatus, error) { return daemonStatus{}, nil }
	if k := h.kernelSince(srv, from, &last); k.Err == "" {
		t.Errorf("no fast_path in the status: %+v", k)
	}
}
