package main

import (
	"slices"
	"testing"
	"time"
)

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

// Only warm-ups send the tunnel protocols' hellos: a measured run's
// generator is told not to, and without a protocol there is none to leave
// out. Every run gives the flows the same sources.
func TestLoadgenArgsHello(t *testing.T) {
	h := &harness{opts: options{bin: "/bin"}}
	tests := []struct {
		proto     string
		hello     bool
		wantFlag  bool // -hello=false given
		wantProto bool
	}{
		{protoWireGuard, true, false, true},
		{protoWireGuard, false, true, true},
		{protoOpenVPN, true, false, true},
		{protoOpenVPN, false, true, true},
		{protoPlain, true, false, false},
		{protoPlain, false, false, false},
	}
	var sources []string
	for _, tt := range tests {
		c := config{Kind: kindProxy, Flows: 10000, Size: 64, Burst: 4, Proto: tt.proto}
		args := h.loadgenArgs("198.18.0.2:9000", c, 20000, 2*time.Second, tt.hello)
		if got := slices.Contains(args, "-hello=false"); got != tt.wantFlag {
			t.Errorf("proto %q, hello %v: -hello=false given %v, want %v (%q)", tt.proto, tt.hello, got, tt.wantFlag, args)
		}
		if got := slices.Contains(args, "-proto"); got != tt.wantProto {
			t.Errorf("proto %q, hello %v: -proto given %v, want %v (%q)", tt.proto, tt.hello, got, tt.wantProto, args)
		}
		i := slices.Index(args, "-src")
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("no -src in %q", args)
		}
		if sources == nil {
			sources = args[i : i+2]
		} else if !slices.Equal(args[i:i+2], sources) {
			t.Errorf("proto %q, hello %v: %q, another run had %q", tt.proto, tt.hello, args[i:i+2], sources)
		}
		if slices.Contains(args, "-port-base") || slices.Contains(args, "-flow-base") {
			t.Errorf("proto %q, hello %v: %q moves the flows' source ports", tt.proto, tt.hello, args)
		}
	}
}
