package main

import (
	"math"
	"slices"
	"testing"
)

func TestVerdict(t *testing.T) {
	tests := []struct {
		loss             []float64
		runs             int
		decided, holding bool
	}{
		{nil, 3, false, false},
		{[]float64{0}, 3, false, false},
		{[]float64{0, 0.05}, 3, true, true},      // two of three held: no third run
		{[]float64{0.2, 5}, 3, true, false},      // two of three lost: no third run
		{[]float64{0, 0.1}, 3, false, false},     // 0.1 % is not under 0.1 %
		{[]float64{0, 0.1, 0.09}, 3, true, true}, // the third decides
		{[]float64{0, 0.1, 1}, 3, true, false},
		{[]float64{0}, 1, true, true},
		{[]float64{0.5}, 1, true, false},
		{[]float64{0, 1, 0, 1}, 5, false, false},
		{[]float64{0, 1, 0, 0}, 5, true, true},
	}
	for _, tt := range tests {
		decided, holding := verdict(tt.loss, tt.runs)
		if decided != tt.decided || holding != tt.holding {
			t.Errorf("verdict(%v, %d) = %v, %v; want %v, %v", tt.loss, tt.runs, decided, holding, tt.decided, tt.holding)
		}
	}
}

func TestBisect(t *testing.T) {
	// A server that holds up to 61 234/s, searched between 20 000 and
	// 100 000 in 5 steps: resolution 2 500/s.
	limit := 61234.0
	best, tried := bisect(20000, 100000, 5, func(r float64) bool { return r <= limit })
	if want := []float64{60000, 80000, 70000, 65000, 62500}; !slices.Equal(tried, want) {
		t.Errorf("tried %v, want %v", tried, want)
	}
	if best != 60000 || limit-best > (100000-20000)/32.0 {
		t.Errorf("best = %v, want 60000 (within one resolution of %v)", best, limit)
	}
	// Nothing holds: the lower bound comes back.
	if best, _ := bisect(0, 1000, 3, func(float64) bool { return false }); best != 0 {
		t.Errorf("best with nothing holding = %v, want 0", best)
	}
	// Everything holds: the last midpoint, one resolution under the top.
	if best, _ := bisect(0, 1024, 4, func(float64) bool { return true }); math.Abs(best-960) > 1e-9 {
		t.Errorf("best with everything holding = %v, want 960", best)
	}
	if best, tried := bisect(5, 10, 0, nil); best != 5 || tried != nil {
		t.Errorf("no steps: %v, %v", best, tried)
	}
}
