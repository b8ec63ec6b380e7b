package bgp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestValidateAS(t *testing.T) {
	for _, as := range []uint32{0, 23456, 65535, 4294967295} {
		if err := ValidateAS(as); err == nil {
			t.Errorf("ValidateAS(%d) = nil, want an error", as)
		}
	}
	for _, as := range []uint32{1, 65000, 64512, 4200000000} {
		if err := ValidateAS(as); err != nil {
			t.Errorf("ValidateAS(%d) = %v", as, err)
		}
	}
}

func TestValidateRouterID(t *testing.T) {
	for _, s := range []string{"", "2001:db8::1", "0.0.0.0", "224.0.0.5", "255.255.255.255"} {
		var a netip.Addr
		if s != "" {
			a = netip.MustParseAddr(s)
		}
		if err := ValidateRouterID(a); err == nil {
			t.Errorf("ValidateRouterID(%q) = nil, want an error", s)
		}
	}
	for _, s := range []string{"198.18.0.1", "10.0.0.1", "::ffff:10.0.0.1"} {
		if err := ValidateRouterID(netip.MustParseAddr(s)); err != nil {
			t.Errorf("ValidateRouterID(%s) = %v", s, err)
		}
	}
}

func TestValidateTimers(t *testing.T) {
	s := time.Second
	ok := [][2]time.Duration{{0, 0}, {3 * s, s}, {3 * s, 2 * s}, {90 * s, 30 * s}, {65535 * s, 60 * s}}
	bad := [][2]time.Duration{
		{0, s},             // keepalives without a hold time
		{s, 0}, {2 * s, s}, // hold time below 3 s
		{3 * s, 0},                      // no keepalive
		{3 * s, 3 * s}, {9 * s, 10 * s}, // keepalive not below the hold time
		{3500 * time.Millisecond, s}, // not whole seconds
		{9 * s, 1500 * time.Millisecond},
		{65536 * s, s}, // too long
		{-s, 0},
	}
	for _, c := range ok {
		if err := ValidateTimers(c[0], c[1]); err != nil {
			t.Errorf("ValidateTimers(%v, %v) = %v", c[0], c[1], err)
		}
	}
	for _, c := range bad {
		if err := ValidateTimers(c[0], c[1]); err == nil {
			t.Errorf("ValidateTimers(%v, %v) = nil, want an error", c[0], c[1])
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, s := range []string{"198.18.100.10/32", "2001:db8::10/128", "10.1.2.3/32"} {
		if err := ValidatePrefix(netip.MustParsePrefix(s)); err != nil {
			t.Errorf("ValidatePrefix(%s) = %v", s, err)
		}
	}
	for _, s := range []string{"", "198.18.100.0/24", "2001:db8::/64", "::ffff:198.18.100.10/128",
		"0.0.0.0/32", "127.0.0.1/32", "224.0.0.1/32", "fe80::1/128", "::/128"} {
		var p netip.Prefix
		if s != "" {
			p = netip.MustParsePrefix(s)
		}
		if err := ValidatePrefix(p); err == nil {
			t.Errorf("ValidatePrefix(%q) = nil, want an error", s)
		}
	}
}

func TestValidatePeerAddress(t *testing.T) {
	for _, s := range []string{"198.18.0.1", "2001:db8::1"} {
		if err := ValidatePeerAddress(netip.MustParseAddr(s)); err != nil {
			t.Errorf("ValidatePeerAddress(%s) = %v", s, err)
		}
	}
	for _, s := range []string{"", "0.0.0.0", "::", "224.0.0.1", "fe80::1", "fe80::1%eth0"} {
		var a netip.Addr
		if s != "" {
			a = netip.MustParseAddr(s)
		}
		if err := ValidatePeerAddress(a); err == nil {
			t.Errorf("ValidatePeerAddress(%q) = nil, want an error", s)
		}
	}
}

func TestParseCommunity(t *testing.T) {
	for s, want := range map[string]uint32{
		"65000:100":    65000<<16 | 100,
		"0:0":          0,
		"65535:65535":  0xFFFFFFFF,
		"no-export":    0xFFFFFF01,
		"NO-ADVERTISE": 0xFFFFFF02,
	} {
		got, err := ParseCommunity(s)
		if err != nil || got != want {
			t.Errorf("ParseCommunity(%q) = %#x, %v, want %#x", s, got, err, want)
		}
	}
	for _, s := range []string{"", "65000", "65536:1", "1:65536", "a:b", "1:-1", "1:2:3"} {
		if _, err := ParseCommunity(s); err == nil {
			t.Errorf("ParseCommunity(%q) = nil error, want one", s)
		}
	}
	if got := FormatCommunity(65000<<16 | 100); got != "65000:100" {
		t.Errorf("FormatCommunity = %q, want 65000:100", got)
	}
}

func TestRouteValidate(t *testing.T) {
	v4 := netip.MustParsePrefix("198.18.100.10/32")
	v6 := netip.MustParsePrefix("2001:db8::10/128")
	good := []Route{
		{Prefix: v4},
		{Prefix: v4, NextHop: netip.MustParseAddr("198.18.0.11")},
		{Prefix: v6, NextHop: netip.MustParseAddr("2001:db8::11")},
	}
	bad := []Route{
		{},
		{Prefix: netip.MustParsePrefix("198.18.100.0/24")},
		{Prefix: v4, NextHop: netip.MustParseAddr("2001:db8::11")},
		{Prefix: v6, NextHop: netip.MustParseAddr("198.18.0.11")},
		{Prefix: v4, NextHop: netip.MustParseAddr("0.0.0.0")},
	}
	for _, r := range good {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	for _, r := range bad {
		if err := r.Validate(); err == nil {
			t.Errorf("%+v: no error", r)
		}
	}
}

// goodConfig returns a valid configuration to break in tests.
func goodConfig() Config {
	return Config{
		LocalAS:  65001,
		RouterID: netip.MustParseAddr("198.18.0.11"),
		Peers: []Peer{{
			Address: netip.MustParseAddr("198.18.0.1"),
			AS:      65000,
			BFD:     &BFD{},
		}},
		GracefulRestart: GracefulRestart{Enabled: true},
	}
}

func TestConfigValidate(t *testing.T) {
	if err := goodConfig().Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, c := range map[string]struct {
		mutate func(*Config)
		want   string
	}{
		"local AS 0":         {func(c *Config) { c.LocalAS = 0 }, "local AS: AS 0 is reserved"},
		"local AS_TRANS":     {func(c *Config) { c.LocalAS = 23456 }, "AS_TRANS"},
		"router ID v6":       {func(c *Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") }, "not an IPv4 address"},
		"router ID unset":    {func(c *Config) { c.RouterID = netip.Addr{} }, "router ID is not set"},
		"listen port":        {func(c *Config) { c.ListenPort = 70000 }, "listen port 70000"},
		"no peers":           {func(c *Config) { c.Peers = nil }, "no peers"},
		"peer AS 0":          {func(c *Config) { c.Peers[0].AS = 0 }, "peer 198.18.0.1: AS 0 is reserved"},
		"peer AS_TRANS":      {func(c *Config) { c.Peers[0].AS = ASTrans }, "peer 198.18.0.1: AS 23456"},
		"peer address":       {func(c *Config) { c.Peers[0].Address = netip.Addr{} }, "peer address is not set"},
		"peer twice":         {func(c *Config) { c.Peers = append(c.Peers, c.Peers[0]) }, "listed twice"},
		"hold time 2s":       {func(c *Config) { c.Peers[0].HoldTime = 2 * time.Second }, "must be 0 or at least 3s"},
		"keepalive too long": {func(c *Config) { c.Peers[0].KeepaliveInterval = 90 * time.Second }, "must be less than the hold time 1m30s"},
		"local address v6": {func(c *Config) { c.Peers[0].LocalAddress = netip.MustParseAddr("2001:db8::1") },
			"local address 2001:db8::1 is not of the peer's address family"},
		"BFD interval":     {func(c *Config) { c.Peers[0].BFD.TxInterval = time.Microsecond }, "BFD transmit interval"},
		"BFD multiplier":   {func(c *Config) { c.Peers[0].BFD.Multiplier = 256 }, "BFD multiplier 256"},
		"restart time":     {func(c *Config) { c.GracefulRestart.RestartTime = 5000 * time.Second }, "graceful restart time"},
		"restarting alone": {func(c *Config) { c.GracefulRestart = GracefulRestart{Restarting: true} }, "restarting is set"},
	} {
		cfg := goodConfig()
		cfg.Peers = append([]Peer(nil), cfg.Peers...)
		bfd := *cfg.Peers[0].BFD
		cfg.Peers[0].BFD = &bfd
		c.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", name, err, c.want)
		}
	}

	// Every problem is reported, not only the first.
	cfg := goodConfig()
	cfg.LocalAS = 0
	cfg.RouterID = netip.Addr{}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "AS 0") || !strings.Contains(err.Error(), "router ID") {
		t.Errorf("Validate() = %v, want both problems", err)
	}
}

func TestWithDefaults(t *testing.T) {
	in := goodConfig()
	in.Peers[0].HoldTime = 4 * time.Second
	c := in.WithDefaults()
	p := c.Peers[0]
	if c.ListenPort != -1 || c.GracefulRestart.RestartTime != DefaultRestartTime {
		t.Errorf("WithDefaults: listen port %d, restart time %v", c.ListenPort, c.GracefulRestart.RestartTime)
	}
	if p.HoldTime != 4*time.Second || p.KeepaliveInterval != time.Second {
		t.Errorf("WithDefaults: hold %v keepalive %v, want 4s 1s", p.HoldTime, p.KeepaliveInterval)
	}
	if *p.BFD != (BFD{Multiplier: DefaultBFDMultiplier, TxInterval: DefaultBFDInterval, RxInterval: DefaultBFDInterval}) {
		t.Errorf("WithDefaults: BFD %+v", *p.BFD)
	}
	if *in.Peers[0].BFD != (BFD{}) {
		t.Errorf("WithDefaults changed the caller's BFD: %+v", *in.Peers[0].BFD)
	}
	d := Config{Peers: []Peer{{}}}.WithDefaults().Peers[0]
	if d.HoldTime != DefaultHoldTime || d.KeepaliveInterval != DefaultHoldTime/3 {
		t.Errorf("WithDefaults: hold %v keepalive %v", d.HoldTime, d.KeepaliveInterval)
	}
}

func TestStartRefusesInvalidConfig(t *testing.T) {
	cfg := goodConfig()
	cfg.LocalAS = ASTrans
	_, err := Start(t.Context(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "bgp: invalid configuration") || !strings.Contains(err.Error(), "AS_TRANS") {
		t.Fatalf("Start = %v, want the configuration refused", err)
	}
	if errors.Unwrap(err) == nil {
		t.Errorf("Start's error wraps nothing: %v", err)
	}
}
