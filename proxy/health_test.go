//go:build linux

package proxy

import (
	"fmt"
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	s := time.Second
	tests := []struct {
		backoff, cap time.Duration
		want         []time.Duration // for failures 1, 2, 3, …
	}{
		{0, 0, []time.Duration{5 * s, 10 * s, 20 * s, 40 * s, 60 * s, 60 * s}},
		{s, 3 * s, []time.Duration{s, 2 * s, 3 * s, 3 * s}},
		{2 * s, 2 * s, []time.Duration{2 * s, 2 * s}},
		{90 * s, 0, []time.Duration{90 * s, 90 * s}}, // default cap raised to Backoff
	}
	for _, tt := range tests {
		h, err := HealthConfig{Backoff: tt.backoff, MaxBackoff: tt.cap}.normalize()
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range tt.want {
			if got := h.backoff(int32(i + 1)); got != want {
				t.Errorf("Backoff %v cap %v, failure %d: %v, want %v", tt.backoff, tt.cap, i+1, got, want)
			}
		}
		if got := h.backoff(maxFailures); got != h.MaxBackoff {
			t.Errorf("Backoff %v cap %v, many failures: %v, want %v", tt.backoff, tt.cap, got, h.MaxBackoff)
		}
	}
}

// TestHealthTransitions walks one backend through a life of failures and
// recoveries, checking return values, health, events and counters at each
// step. The default back-off (5 s doubling to 60 s) applies.
func TestHealthTransitions(t *testing.T) {
	const s = time.Second
	clk := newFakeClock()
	var events []string
	b := newTestBalancer(t, PolicyRoundRobin, 3, clk, func(e HealthEvent) {
		events = append(events, fmt.Sprintf("%s up=%v f=%d %v", e.Addr, e.Up, e.Failures, e.Backoff))
	})
	const be = 1
	addr := b.Status(be).Addr.String()

	type op int
	const (
		down op = iota
		up
		refresh
		pick // Pick once per backend so the round robin would reach be
	)
	steps := []struct {
		at       time.Duration
		op       op
		want     int // MarkDown/MarkUp: 1 for true; Refresh: count; pick: 1 if be was picked
		healthy  bool
		failures int
		event    string // expected OnChange event, if any
	}{
		{0, down, 1, false, 1, "up=false f=1 5s"},
		{1 * s, down, 0, false, 1, ""}, // same outage, reported by another socket
		{4*s + 900*time.Millisecond, refresh, 0, false, 1, ""},
		{4*s + 900*time.Millisecond, pick, 0, false, 1, ""},
		{5 * s, refresh, 1, true, 1, "up=true f=1 0s"}, // back-off over; failures kept
		{6 * s, down, 1, false, 2, "up=false f=2 10s"}, // still failing: doubled
		{15 * s, pick, 0, false, 2, ""},
		{16 * s, pick, 1, true, 2, "up=true f=2 0s"}, // Pick returns it by itself
		{17 * s, up, 0, true, 0, ""},                 // traffic from it: failures reset
		{17 * s, up, 0, true, 0, ""},
		{18 * s, down, 1, false, 1, "up=false f=1 5s"}, // back to the first back-off
		{19 * s, up, 1, true, 0, "up=true f=0 0s"},     // alive after all: back at once
		{20 * s, down, 1, false, 1, "up=false f=1 5s"},
		{26 * s, down, 0, false, 2, ""}, // failing after the back-off, before any return: extended to 36 s
		{30 * s, refresh, 0, false, 2, ""},
		{36 * s, refresh, 1, true, 2, "up=true f=2 0s"},
		{37 * s, refresh, 0, true, 2, ""},
	}
	wantDowns, wantUps := uint64(0), uint64(0)
	for i, st := range steps {
		clk.Set(st.at)
		events = events[:0]
		var got int
		switch st.op {
		case down:
			if b.MarkDown(be, clk.Now()) {
				got = 1
			}
		case up:
			if b.MarkUp(be) {
				got = 1
			}
		case refresh:
			got = b.Refresh(clk.Now())
		case pick:
			for range b.Len() {
				if i, ok := b.Pick(0); ok && i == be {
					got = 1
				}
			}
		}
		if got != st.want {
			t.Fatalf("step %d (%v, op %d): got %d, want %d", i, st.at, st.op, got, st.want)
		}
		s := b.Status(be)
		if s.Healthy != st.healthy || s.Failures != st.failures {
			t.Fatalf("step %d (%v): healthy %v failures %d, want %v %d", i, st.at, s.Healthy, s.Failures, st.healthy, st.failures)
		}
		var wantEvents []string
		if st.event != "" {
			wantEvents = []string{addr + " " + st.event}
			if st.event[3] == 't' {
				wantUps++
			} else {
				wantDowns++
			}
		}
		if fmt.Sprint(events) != fmt.Sprint(wantEvents) {
			t.Fatalf("step %d (%v): events %q, want %q", i, st.at, events, wantEvents)
		}
		if s.Downs != wantDowns || s.Ups != wantUps {
			t.Fatalf("step %d (%v): %d downs %d ups, want %d %d", i, st.at, s.Downs, s.Ups, wantDowns, wantUps)
		}
	}
	for i := range b.Len() {
		if i != be && (b.Status(i).Downs != 0 || !b.Status(i).Healthy) {
			t.Errorf("backend %d affected: %+v", i, b.Status(i))
		}
	}
}

// TestHealthCallbackSeesNewState checks that OnChange runs after the new
// snapshot is published and may call Pick and Status.
func TestHealthCallbackSeesNewState(t *testing.T) {
	clk := newFakeClock()
	var b *Balancer
	var log []string
	b = newTestBalancer(t, PolicyMaglev, 1, clk, func(e HealthEvent) {
		_, ok := b.Pick(7)
		log = append(log, fmt.Sprintf("up=%v healthy=%v pick=%v", e.Up, b.Status(0).Healthy, ok))
	})
	b.MarkDown(0, clk.Now())
	clk.Set(5 * time.Second)
	b.Pick(7) // returns backend 0 from inside Pick, callback calls Pick again
	b.MarkDown(0, clk.Now())
	b.MarkUp(0)
	want := "[up=false healthy=false pick=false up=true healthy=true pick=true up=false healthy=false pick=false up=true healthy=true pick=true]"
	if fmt.Sprint(log) != want {
		t.Fatalf("got %v\nwant %v", log, want)
	}
}

// TestHealthDownKeepsOthersSticky checks the point of rebuilding a Maglev
// table on health changes: keys of healthy backends stay where they were.
func TestHealthDownKeepsOthersSticky(t *testing.T) {
	clk := newFakeClock()
	b := newTestBalancer(t, PolicyMaglev, 6, clk, nil)
	before := make([]int, testKeys)
	for i := range before {
		before[i], _ = b.Pick(keyHash(i))
	}
	b.MarkDown(4, clk.Now())
	b.settle()
	moved := 0
	for i, was := range before {
		now, _ := b.Pick(keyHash(i))
		if now == 4 {
			t.Fatalf("key %d still on the down backend", i)
		}
		if was != 4 && now != was {
			moved++
		}
	}
	if moved > testKeys/100 {
		t.Errorf("%d keys of healthy backends moved", moved)
	}
	b.MarkUp(4)
	b.settle()
	for i, was := range before {
		if now, _ := b.Pick(keyHash(i)); now != was {
			t.Fatalf("key %d on %d after recovery, was on %d", i, now, was)
		}
	}
}
