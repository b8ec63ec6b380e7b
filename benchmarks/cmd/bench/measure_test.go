package main

import "testing"

// A warm-up gives every flow its turn: at a fixed rate, each turn is a
// burst.
func TestWarmup(t *testing.T) {
	tests := []struct {
		c    config
		want string
	}{
		{config{Flows: 256, Rate: 20000, Burst: 4}, "1s"},
		{config{Flows: 10000, Rate: 20000, Burst: 4}, "2s"},
		{config{Flows: 10000, Rate: 0, Burst: 4}, "1s"},
		{config{Flows: 100000, Rate: 50000, Burst: 1}, "2s"},
		{config{Flows: 100000, Rate: 20000, Burst: 4}, "3s"},
	}
	for _, tt := range tests {
		if got := warmup(tt.c).String(); got != tt.want {
			t.Errorf("warmup(%d flows at %.0f/s, bursts of %d) = %s, want %s", tt.c.Flows, tt.c.Rate, tt.c.Burst, got, tt.want)
		}
	}
}
