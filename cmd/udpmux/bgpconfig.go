//go:build linux

package main

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/udpmux/udpmux/internal/bgp"
)

// bgpFileConfig is the bgp section as written: a fleet host announces its
// listeners' addresses to its routers (see announce.go).
type bgpFileConfig struct {
	LocalAS         int64                 `mapstructure:"local_as"`
	RouterID        string                `mapstructure:"router_id"`
	Peers           []bgpPeerConfig       `mapstructure:"peers"`
	GracefulRestart gracefulRestartConfig `mapstructure:"graceful_restart"`
	// DrainTimeout and DrainQuiet end `udpmux drain`: the process exits
	// when the first passes, or when its announced listeners have received
	// nothing for the second.
	DrainTimeout string `mapstructure:"drain_timeout"`
	DrainQuiet   string `mapstructure:"drain_quiet"`
}

type bgpPeerConfig struct {
	Address      string     `mapstructure:"address"`
	AS           int64      `mapstructure:"as"`
	Password     string     `mapstructure:"password"`
	LocalAddress string     `mapstructure:"local_address"`
	HoldTime     string     `mapstructure:"hold_time"`
	Keepalive    string     `mapstructure:"keepalive"`
	BFD          *bfdConfig `mapstructure:"bfd"`
}

type bfdConfig struct {
	Interval   string `mapstructure:"interval"`
	Multiplier int64  `mapstructure:"multiplier"`
}

type gracefulRestartConfig struct {
	Enabled     bool   `mapstructure:"enabled"`
	RestartTime string `mapstructure:"restart_time"`
}

// announceConfig is a listener's announcement: its address as a host
// route, with the attributes an operator's routing policy may need.
type announceConfig struct {
	// Prefix, if set, must be the listener's address as /32 or /128: it
	// says so in the file for whoever reads it.
	Prefix      string   `mapstructure:"prefix"`
	Communities []string `mapstructure:"communities"`
	MED         *int64   `mapstructure:"med"`
}

// minRestartTime bounds bgp.graceful_restart.restart_time from below (see
// successorDialDelay).
const minRestartTime = 2 * time.Second

// bgpDefaults are the bgp section's defaults (see defaults). Graceful
// restart is on, with a restart time short enough that a host killed
// outright leaves the routers' ECMP sets within 3 s: the routers keep a
// crashed speaker's routes that long.
var bgpDefaults = map[string]any{
	"bgp.local_as":                      0,
	"bgp.router_id":                     "",
	"bgp.graceful_restart.enabled":      true,
	"bgp.graceful_restart.restart_time": "2s",
	"bgp.drain_timeout":                 "30s",
	"bgp.drain_quiet":                   "2s",
}

// fleetConfig is a checked bgp section with the routes of the listeners
// that announce.
type fleetConfig struct {
	speaker                  bgp.Config
	drainTimeout, drainQuiet time.Duration
	vips                     []vip
}

// vip is a listener's announced route.
type vip struct {
	listener int // index in the config's listeners
	name     string
	route    bgp.Route
}

// configured reports whether the file has a bgp section.
func (b *bgpFileConfig) configured() bool {
	return b.LocalAS != 0 || b.RouterID != "" || len(b.Peers) > 0
}

// check validates the bgp section and the listeners' announce settings;
// addrs are the listeners' addresses. It returns nil when there is no bgp
// section and no listener announces.
func (b *bgpFileConfig) check(listeners []listenerConfig, addrs []netip.AddrPort) (*fleetConfig, error) {
	var vips []vip
	for i, l := range listeners {
		if l.Announce == nil {
			continue
		}
		key := fmt.Sprintf("listeners[%d].announce", i)
		if !b.configured() {
			return nil, fmt.Errorf("%s: needs the bgp section (bgp.local_as, bgp.router_id, bgp.peers)", key)
		}
		r, err := l.Announce.route(key, addrs[i])
		if err != nil {
			return nil, err
		}
		name := l.Name
		if name == "" {
			name = fmt.Sprintf("listener%d", i)
		}
		for _, o := range vips {
			if o.route.Prefix == r.Prefix && !sameAttributes(o.route, r) {
				return nil, fmt.Errorf("%s: %s is announced by listener %s with other communities or med; give both the same", key, r.Prefix, o.name)
			}
		}
		vips = append(vips, vip{listener: i, name: name, route: r})
	}
	if !b.configured() {
		return nil, nil
	}
	if len(vips) == 0 {
		return nil, errors.New("bgp: no listener announces its address (listeners[].announce)")
	}
	f := &fleetConfig{vips: vips}
	if err := b.speakerConfig(&f.speaker); err != nil {
		return nil, err
	}
	for _, v := range vips {
		if !hasPeerOfFamily(f.speaker.Peers, v.route.Prefix.Addr()) {
			return nil, fmt.Errorf("listeners[%d].announce: no bgp.peers address of %s's family to announce it to", v.listener, v.route.Prefix)
		}
	}
	var err error
	if f.drainTimeout, err = positiveDuration("bgp.drain_timeout", b.DrainTimeout); err != nil {
		return nil, err
	}
	if f.drainQuiet, err = positiveDuration("bgp.drain_quiet", b.DrainQuiet); err != nil {
		return nil, err
	}
	if f.drainQuiet > f.drainTimeout {
		return nil, fmt.Errorf("bgp.drain_quiet: %v is longer than bgp.drain_timeout (%v)", f.drainQuiet, f.drainTimeout)
	}
	return f, nil
}

// speakerConfig fills c from the section, naming the key of what is wrong.
func (b *bgpFileConfig) speakerConfig(c *bgp.Config) error {
	as, err := asNumber("bgp.local_as", b.LocalAS)
	if err != nil {
		return err
	}
	c.LocalAS = as
	id, err := netip.ParseAddr(b.RouterID)
	if err != nil {
		return fmt.Errorf("bgp.router_id: %q is not an IPv4 address", b.RouterID)
	}
	if err := bgp.ValidateRouterID(id); err != nil {
		return fmt.Errorf("bgp.router_id: %w", err)
	}
	c.RouterID = id
	if len(b.Peers) == 0 {
		return errors.New("bgp.peers: none configured (the routers to announce to)")
	}
	seen := map[netip.Addr]bool{}
	for i, pc := range b.Peers {
		p, err := pc.peer(fmt.Sprintf("bgp.peers[%d]", i))
		if err != nil {
			return err
		}
		if seen[p.Address] {
			return fmt.Errorf("bgp.peers[%d].address: %s is listed twice", i, p.Address)
		}
		seen[p.Address] = true
		c.Peers = append(c.Peers, p)
	}
	c.GracefulRestart.Enabled = b.GracefulRestart.Enabled
	if b.GracefulRestart.Enabled {
		d, err := time.ParseDuration(b.GracefulRestart.RestartTime)
		if err != nil || d < minRestartTime || d > bgp.MaxRestartTime || d%time.Second != 0 {
			return fmt.Errorf("bgp.graceful_restart.restart_time: %q is not whole seconds from %v to %v (an upgrade's successor takes up to 2s to take the routes over)",
				b.GracefulRestart.RestartTime, minRestartTime, bgp.MaxRestartTime)
		}
		c.GracefulRestart.RestartTime = d
		for i, p := range c.Peers {
			if p.BFD == nil {
				continue
			}
			bfd := p.BFD
			detect := time.Duration(cmp.Or(bfd.Multiplier, bgp.DefaultBFDMultiplier)) * max(cmp.Or(bfd.TxInterval, bgp.DefaultBFDInterval), cmp.Or(bfd.RxInterval, bgp.DefaultBFDInterval))
			if detect > maxHandoverBFD {
				return fmt.Errorf("bgp.peers[%d].bfd: detection time %v (interval × multiplier) is over %v: with graceful restart, the router's BFD would reset an upgrade's successor's session when the predecessor's BFD stops", i, detect, maxHandoverBFD)
			}
		}
	}
	// What the helpers above do not check, with the speaker's defaults.
	if err := c.Validate(); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	return nil
}

// peer checks one peer; key is its key in the file.
func (pc *bgpPeerConfig) peer(key string) (bgp.Peer, error) {
	var p bgp.Peer
	a, err := netip.ParseAddr(pc.Address)
	if err != nil {
		return p, fmt.Errorf("%s.address: %q is not an IP address", key, pc.Address)
	}
	if err := bgp.ValidatePeerAddress(a); err != nil {
		return p, fmt.Errorf("%s.address: %w", key, err)
	}
	p.Address = a.Unmap()
	if p.AS, err = asNumber(key+".as", pc.AS); err != nil {
		return p, err
	}
	if pc.LocalAddress != "" {
		if p.LocalAddress, err = netip.ParseAddr(pc.LocalAddress); err != nil {
			return p, fmt.Errorf("%s.local_address: %q is not an IP address", key, pc.LocalAddress)
		}
		p.LocalAddress = p.LocalAddress.Unmap()
		if p.LocalAddress.Is4() != p.Address.Is4() {
			return p, fmt.Errorf("%s.local_address: %s is not of the peer's address family", key, p.LocalAddress)
		}
	}
	if len(pc.Password) > 80 {
		return p, fmt.Errorf("%s.password: longer than 80 bytes, the TCP MD5 key limit", key)
	}
	p.Password = pc.Password
	if pc.HoldTime != "" {
		if p.HoldTime, err = time.ParseDuration(pc.HoldTime); err != nil {
			return p, fmt.Errorf("%s.hold_time: %q is not a duration such as 9s", key, pc.HoldTime)
		}
	}
	if pc.Keepalive != "" {
		if p.KeepaliveInterval, err = time.ParseDuration(pc.Keepalive); err != nil {
			return p, fmt.Errorf("%s.keepalive: %q is not a duration such as 3s", key, pc.Keepalive)
		}
	}
	if p.HoldTime != 0 || p.KeepaliveInterval != 0 {
		hold, keepalive := p.HoldTime, p.KeepaliveInterval
		if hold == 0 {
			hold = bgp.DefaultHoldTime
		}
		if keepalive == 0 {
			keepalive = (hold / 3).Truncate(time.Second)
		}
		if err := bgp.ValidateTimers(hold, keepalive); err != nil {
			return p, fmt.Errorf("%s.hold_time, %s.keepalive: %w", key, key, err)
		}
	}
	if pc.BFD != nil {
		p.BFD = &bgp.BFD{}
		if pc.BFD.Interval != "" {
			d, err := time.ParseDuration(pc.BFD.Interval)
			if err != nil || d < 10*time.Millisecond || d > 10*time.Second {
				return p, fmt.Errorf("%s.bfd.interval: %q is not a duration from 10ms to 10s", key, pc.BFD.Interval)
			}
			p.BFD.TxInterval, p.BFD.RxInterval = d, d
		}
		if pc.BFD.Multiplier != 0 {
			if pc.BFD.Multiplier < 1 || pc.BFD.Multiplier > 255 {
				return p, fmt.Errorf("%s.bfd.multiplier: %d is not from 1 to 255", key, pc.BFD.Multiplier)
			}
			p.BFD.Multiplier = uint32(pc.BFD.Multiplier)
		}
	}
	return p, nil
}

// route checks a listener's announcement; addr is the listener's address.
func (a *announceConfig) route(key string, addr netip.AddrPort) (bgp.Route, error) {
	var r bgp.Route
	ip := addr.Addr().Unmap()
	if ip.IsUnspecified() {
		return r, fmt.Errorf("%s: the listener's address %s is a wildcard; a listener that announces serves one address, its VIP", key, addr)
	}
	r.Prefix = netip.PrefixFrom(ip, ip.BitLen())
	if a.Prefix != "" {
		p, err := netip.ParsePrefix(a.Prefix)
		if err != nil {
			return r, fmt.Errorf("%s.prefix: %q is not a prefix such as %s", key, a.Prefix, r.Prefix)
		}
		if p != r.Prefix {
			return r, fmt.Errorf("%s.prefix: %s is not the listener's address as a host route (%s): a listener announces only what it serves", key, p, r.Prefix)
		}
	}
	if err := bgp.ValidatePrefix(r.Prefix); err != nil {
		return r, fmt.Errorf("%s: %w", key, err)
	}
	for j, s := range a.Communities {
		c, err := bgp.ParseCommunity(s)
		if err != nil {
			return r, fmt.Errorf("%s.communities[%d]: %w", key, j, err)
		}
		r.Communities = append(r.Communities, c)
	}
	if a.MED != nil {
		if *a.MED < 0 || *a.MED > math.MaxUint32 {
			return r, fmt.Errorf("%s.med: %d is not from 0 to %d", key, *a.MED, uint32(math.MaxUint32))
		}
		med := uint32(*a.MED)
		r.MED = &med
	}
	return r, nil
}

// sameAttributes reports whether two routes of one prefix carry the same
// attributes: two listeners on one VIP announce one route.
func sameAttributes(a, b bgp.Route) bool {
	return slices.Equal(a.Communities, b.Communities) &&
		(a.MED == nil) == (b.MED == nil) && (a.MED == nil || *a.MED == *b.MED)
}

// asNumber checks an AS number of the file.
func asNumber(key string, n int64) (uint32, error) {
	if n < 1 || n > math.MaxUint32 {
		return 0, fmt.Errorf("%s: %d is not an AS number (1 to 4294967294)", key, n)
	}
	if err := bgp.ValidateAS(uint32(n)); err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return uint32(n), nil
}

// hasPeerOfFamily reports whether a peer has a's address family.
func hasPeerOfFamily(peers []bgp.Peer, a netip.Addr) bool {
	for _, p := range peers {
		if p.Address.Is4() == a.Is4() {
			return true
		}
	}
	return false
}

// positiveDuration parses the duration s of key, which must be positive.
func positiveDuration(key, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s: %q is not a positive duration such as 30s", key, s)
	}
	return d, nil
}
