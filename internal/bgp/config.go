package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults applied by Start (and by Config.WithDefaults) to fields left zero.
const (
	// DefaultHoldTime is a peer's hold time when none is set (RFC 4271
	// suggests 90 s).
	DefaultHoldTime = 90 * time.Second
	// DefaultRestartTime is the graceful restart time advertised to peers
	// when graceful restart is enabled and no time is set: how long a peer
	// keeps this speaker's routes after the session drops without a
	// NOTIFICATION, waiting for a successor. A crashed speaker's routes stay
	// that long too, so it is short; a successor dials within 2 s.
	DefaultRestartTime = 10 * time.Second
	// DefaultBFDInterval is the BFD transmit and receive interval when none
	// is set.
	DefaultBFDInterval = 300 * time.Millisecond
	// DefaultBFDMultiplier is the BFD detect multiplier when none is set.
	DefaultBFDMultiplier = 3
)

// Limits of the protocol, checked by the validation helpers.
const (
	// MinHoldTime is the smallest non-zero hold time BGP allows (RFC 4271,
	// 4.2).
	MinHoldTime = 3 * time.Second
	// MaxHoldTime is the largest hold time an OPEN message can carry.
	MaxHoldTime = 65535 * time.Second
	// MaxRestartTime is the largest restart time the graceful restart
	// capability can carry (12 bits of seconds, RFC 4724).
	MaxRestartTime = 4095 * time.Second
	// ASTrans is AS_TRANS (RFC 6793), the placeholder a 4-octet AS speaker
	// puts in the 2-octet field; no speaker may use it as its AS.
	ASTrans = 23456
)

// Config is a Speaker's configuration: who it is and whom it peers with.
// Routes are not part of it: they come and go with the listeners (see
// Speaker.Announce).
type Config struct {
	// LocalAS is this speaker's autonomous system number (4-octet ASNs
	// allowed). 0, AS_TRANS (23456), 65535 and 4294967295 are refused.
	LocalAS uint32
	// RouterID is the BGP identifier, an IPv4 address unique among the
	// router's peers (usually the host's own address).
	RouterID netip.Addr
	// ListenPort is the TCP port on which to accept sessions. 0 or -1
	// means do not listen: the speaker only dials its peers, which is all
	// an announcer needs and leaves port 179 to a routing daemon on the same
	// host.
	ListenPort int32
	// Peers are the routers to announce to.
	Peers []Peer
	// GracefulRestart configures graceful restart (RFC 4724) with every
	// peer.
	GracefulRestart GracefulRestart
}

// Peer is one router the Speaker announces to.
type Peer struct {
	// Address is the router's address; the session is dialled to its TCP
	// port 179. Routes of the same address family are sent to it.
	Address netip.Addr
	// AS is the router's autonomous system: a different one from LocalAS
	// makes an eBGP session, the same one iBGP.
	AS uint32
	// LocalAddress, if valid, is the source address of the session (the
	// speaker's next hop for the peer); otherwise the kernel picks it.
	LocalAddress netip.Addr
	// Password, if not empty, protects the session with TCP MD5 signatures
	// (RFC 2385); the router needs the same password.
	Password string
	// HoldTime is the hold time proposed in the OPEN message, in whole
	// seconds: 0 means DefaultHoldTime, otherwise at least MinHoldTime.
	// The session uses the smaller of the two sides' hold times.
	HoldTime time.Duration
	// KeepaliveInterval is the time between KEEPALIVE messages, in whole
	// seconds, less than the hold time: 0 means a third of the hold time.
	KeepaliveInterval time.Duration
	// BFD, if not nil, runs a BFD session (RFC 5880, single hop RFC 5881)
	// with the router while the BGP session is Established: a lost BFD
	// session resets the BGP session, on both sides, within the BFD
	// detection time rather than the hold time. The router must run BFD
	// for this neighbor too (FRR: neighbor X bfd; see GracefulRestart for
	// what not to add).
	// The speaker listens on UDP port 3784.
	BFD *BFD
}

// BFD are a peer's BFD timers. The router detects this speaker's loss after
// Multiplier times the larger of TxInterval and its own receive interval.
type BFD struct {
	// Multiplier is the detect multiplier: how many intervals without a
	// packet declare the session down. 0 means DefaultBFDMultiplier.
	Multiplier uint32
	// TxInterval is the desired minimum transmit interval. 0 means
	// DefaultBFDInterval. BFD counts in microseconds.
	TxInterval time.Duration
	// RxInterval is the required minimum receive interval. 0 means
	// DefaultBFDInterval.
	RxInterval time.Duration
}

// GracefulRestart configures graceful restart (RFC 4724) with every peer.
// A peer that is a graceful restart helper keeps this speaker's routes,
// marked stale, for RestartTime after the session drops without a
// NOTIFICATION (Speaker.Stop(true), or a crash), and forgets the stale ones
// that the successor does not announce again before its End-of-RIB marker.
//
// A router cannot tell a crash from a graceful stop: both close the TCP
// session without a NOTIFICATION. With graceful restart, a speaker killed
// outright keeps its place in the ECMP set for RestartTime, traffic to it
// lost meanwhile; one cut off from the router is still dropped within the
// BFD detection time (the router's BFD resets the session with a
// NOTIFICATION). This speaker's BFD stops with its process, so the router's
// BFD goes down during a restart too; FRR then finds the session down
// already and keeps the stale routes. Do not set FRR's "neighbor X bfd
// check-control-plane-failure": as this speaker's BFD has the C bit clear,
// FRR then ignores BFD going down for a peer with graceful restart at any
// time, and a cut-off speaker keeps its routes until the hold time.
type GracefulRestart struct {
	// Enabled advertises the graceful restart capability, for the unicast
	// families, to every peer.
	Enabled bool
	// RestartTime is the time advertised to peers to wait for a successor,
	// in whole seconds, at most MaxRestartTime. 0 means DefaultRestartTime.
	// It also bounds how long a crashed speaker's routes may linger.
	RestartTime time.Duration
	// Restarting says that this speaker succeeds one that stopped with
	// Stop(true): its OPEN sets the Restart State bit and the Forwarding
	// State bit, so that peers keep the predecessor's routes until this
	// speaker's End-of-RIB rather than dropping them at once. The speaker
	// then defers its own updates until it has the peers' End-of-RIB
	// markers or RestartTime has passed, so the routes a successor
	// announces soon after Start go out in its first update.
	Restarting bool
}

// Route is a route this speaker announces: usually a listener's service
// address as a host prefix.
type Route struct {
	// Prefix is the announced prefix: a host route, /32 or /128.
	Prefix netip.Prefix
	// Communities are standard communities (RFC 1997), as from
	// ParseCommunity.
	Communities []uint32
	// MED, if not nil, is the MULTI_EXIT_DISC attribute.
	MED *uint32
	// NextHop, if valid, is the next hop to announce; otherwise the
	// session's local address (next hop self). It must be of the prefix's
	// family.
	NextHop netip.Addr
}

// Well-known communities (RFC 1997, RFC 3765) that ParseCommunity accepts by
// name.
var wellKnownCommunities = map[string]uint32{
	"no-export":           0xFFFFFF01,
	"no-advertise":        0xFFFFFF02,
	"no-export-subconfed": 0xFFFFFF03,
	"no-peer":             0xFFFFFF04,
}

// ParseCommunity parses a standard community written as "ASN:VALUE" (two
// numbers of 0 to 65535, such as "65000:100") or as one of the well-known
// names no-export, no-advertise, no-export-subconfed and no-peer.
func ParseCommunity(s string) (uint32, error) {
	if v, ok := wellKnownCommunities[strings.ToLower(s)]; ok {
		return v, nil
	}
	hi, lo, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("community %q: want ASN:VALUE, such as 65000:100, or a well-known name", s)
	}
	h, err := strconv.ParseUint(hi, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("community %q: ASN %q is not a number from 0 to 65535", s, hi)
	}
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("community %q: value %q is not a number from 0 to 65535", s, lo)
	}
	return uint32(h)<<16 | uint32(l), nil
}

// FormatCommunity writes a standard community as "ASN:VALUE".
func FormatCommunity(c uint32) string {
	return fmt.Sprintf("%d:%d", c>>16, c&0xFFFF)
}

// ValidateAS checks an autonomous system number for use as a speaker's or
// a peer's AS: 0 (RFC 7607), AS_TRANS 23456 (RFC 6793) and the last 2- and
// 4-octet ASNs 65535 and 4294967295 (RFC 7300) are refused.
func ValidateAS(as uint32) error {
	switch as {
	case 0:
		return errors.New("AS 0 is reserved (RFC 7607)")
	case ASTrans:
		return errors.New("AS 23456 is AS_TRANS, reserved for 2-octet speakers (RFC 6793)")
	case 65535, 4294967295:
		return fmt.Errorf("AS %d is reserved (RFC 7300)", as)
	}
	return nil
}

// ValidateRouterID checks a BGP identifier: an IPv4 address, not 0.0.0.0,
// multicast or broadcast (RFC 6286 allows any other non-zero value; these are
// refused as the usual mistakes).
func ValidateRouterID(id netip.Addr) error {
	switch {
	case !id.IsValid():
		return errors.New("router ID is not set: it must be an IPv4 address")
	case !id.Unmap().Is4():
		return fmt.Errorf("router ID %s is not an IPv4 address", id)
	case id.Unmap().IsUnspecified():
		return errors.New("router ID 0.0.0.0 is not allowed")
	case id.Unmap().IsMulticast() || id.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("router ID %s is a multicast or broadcast address", id)
	}
	return nil
}

// ValidateTimers checks a hold time and a keepalive interval as BGP carries
// them (zero values are not replaced by defaults here): the hold time is 0
// (no keepalives, no hold timer) or from 3 s to 65535 s, in whole seconds;
// the keepalive interval is in whole seconds, 0 when the hold time is 0 and
// otherwise from 1 s to less than the hold time.
func ValidateTimers(hold, keepalive time.Duration) error {
	if hold < 0 || hold%time.Second != 0 {
		return fmt.Errorf("hold time %v: must be whole seconds", hold)
	}
	if hold != 0 && hold < MinHoldTime {
		return fmt.Errorf("hold time %v: must be 0 or at least %v (RFC 4271)", hold, MinHoldTime)
	}
	if hold > MaxHoldTime {
		return fmt.Errorf("hold time %v: must be at most %v", hold, MaxHoldTime)
	}
	if keepalive < 0 || keepalive%time.Second != 0 {
		return fmt.Errorf("keepalive interval %v: must be whole seconds", keepalive)
	}
	if hold == 0 {
		if keepalive != 0 {
			return fmt.Errorf("keepalive interval %v: must be 0 when the hold time is 0", keepalive)
		}
		return nil
	}
	if keepalive == 0 {
		return fmt.Errorf("keepalive interval 0: must be at least 1s when the hold time is %v", hold)
	}
	if keepalive >= hold {
		return fmt.Errorf("keepalive interval %v: must be less than the hold time %v", keepalive, hold)
	}
	return nil
}

// ValidatePrefix checks a prefix to announce: a valid host prefix, /32 for
// IPv4 or /128 for IPv6, in canonical form (no IPv4-mapped IPv6), and not
// an unspecified, loopback, multicast or link-local address.
func ValidatePrefix(p netip.Prefix) error {
	a := p.Addr()
	switch {
	case !p.IsValid():
		return errors.New("prefix is not set or not valid")
	case a.Is4In6():
		return fmt.Errorf("prefix %s: IPv4-mapped IPv6; write the IPv4 address", p)
	case !p.IsSingleIP():
		return fmt.Errorf("prefix %s: only host routes are announced (/%d)", p, a.BitLen())
	case a.Zone() != "":
		return fmt.Errorf("prefix %s: has a zone", p)
	case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast():
		return fmt.Errorf("prefix %s: an unspecified, loopback, multicast or link-local address cannot be announced", p)
	}
	return nil
}

// ValidatePeerAddress checks a peer's address: a valid unicast address,
// without a zone (link-local peers are not supported), not unspecified,
// loopback or multicast.
func ValidatePeerAddress(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("peer address is not set or not valid")
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		return fmt.Errorf("peer address %s: link-local peers are not supported", a)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("peer address %s: not a unicast address", a)
	}
	return nil
}

// Validate checks a route; Speaker.Announce refuses a route that fails it.
func (r Route) Validate() error {
	if err := ValidatePrefix(r.Prefix); err != nil {
		return err
	}
	if r.NextHop.IsValid() {
		nh := r.NextHop
		if nh.Is4() != r.Prefix.Addr().Is4() || nh.Is4In6() {
			return fmt.Errorf("route %s: next hop %s is not of the prefix's address family", r.Prefix, nh)
		}
		if nh.IsUnspecified() || nh.IsMulticast() || nh.Zone() != "" {
			return fmt.Errorf("route %s: next hop %s is not a global unicast address", r.Prefix, nh)
		}
	}
	return nil
}

// Validate checks a peer's settings, with defaults applied to zero fields.
func (p Peer) Validate() error {
	if err := ValidatePeerAddress(p.Address); err != nil {
		return err
	}
	if err := ValidateAS(p.AS); err != nil {
		return fmt.Errorf("peer %s: %w", p.Address, err)
	}
	if p.LocalAddress.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
		return fmt.Errorf("peer %s: local address %s is not of the peer's address family", p.Address, p.LocalAddress)
	}
	if len(p.Password) > 80 {
		return fmt.Errorf("peer %s: password longer than 80 bytes (the TCP MD5 key limit)", p.Address)
	}
	d := p.withDefaults()
	if err := ValidateTimers(d.HoldTime, d.KeepaliveInterval); err != nil {
		return fmt.Errorf("peer %s: %w", p.Address, err)
	}
	if b := d.BFD; b != nil {
		if b.Multiplier > 255 {
			return fmt.Errorf("peer %s: BFD multiplier %d: must be 1 to 255", p.Address, b.Multiplier)
		}
		for _, iv := range []struct {
			name string
			d    time.Duration
		}{{"transmit", b.TxInterval}, {"receive", b.RxInterval}} {
			if iv.d < time.Millisecond || iv.d > time.Minute {
				return fmt.Errorf("peer %s: BFD %s interval %v: must be from 1ms to 1m", p.Address, iv.name, iv.d)
			}
		}
	}
	return nil
}

// Validate checks the whole configuration, with defaults applied to zero
// fields, and returns every problem found, joined.
func (c Config) Validate() error {
	var errs []error
	if err := ValidateAS(c.LocalAS); err != nil {
		errs = append(errs, fmt.Errorf("local AS: %w", err))
	}
	if err := ValidateRouterID(c.RouterID); err != nil {
		errs = append(errs, err)
	}
	if c.ListenPort < -1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen port %d: must be 0 or -1 (do not listen) or a TCP port", c.ListenPort))
	}
	if len(c.Peers) == 0 {
		errs = append(errs, errors.New("no peers"))
	}
	seen := make(map[netip.Addr]bool, len(c.Peers))
	for _, p := range c.Peers {
		if err := p.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[p.Address] {
			errs = append(errs, fmt.Errorf("peer %s: listed twice", p.Address))
		}
		seen[p.Address] = true
	}
	gr := c.GracefulRestart
	if gr.RestartTime < 0 || gr.RestartTime%time.Second != 0 || gr.RestartTime > MaxRestartTime {
		errs = append(errs, fmt.Errorf("graceful restart time %v: must be whole seconds, at most %v", gr.RestartTime, MaxRestartTime))
	}
	if !gr.Enabled && gr.Restarting {
		errs = append(errs, errors.New("graceful restart: restarting is set but graceful restart is not enabled"))
	}
	return errors.Join(errs...)
}

// WithDefaults returns the configuration with the defaults applied to zero
// fields, as Start uses it.
func (c Config) WithDefaults() Config {
	if c.ListenPort == 0 {
		c.ListenPort = -1
	}
	if c.GracefulRestart.RestartTime == 0 {
		c.GracefulRestart.RestartTime = DefaultRestartTime
	}
	peers := make([]Peer, len(c.Peers))
	for i, p := range c.Peers {
		peers[i] = p.withDefaults()
	}
	c.Peers = peers
	return c
}

// withDefaults returns the peer with the defaults applied to zero fields;
// BFD is copied, so the caller's is never changed.
func (p Peer) withDefaults() Peer {
	if p.HoldTime == 0 {
		p.HoldTime = DefaultHoldTime
	}
	if p.KeepaliveInterval == 0 {
		p.KeepaliveInterval = (p.HoldTime / 3).Truncate(time.Second)
	}
	if p.BFD != nil {
		b := *p.BFD
		if b.Multiplier == 0 {
			b.Multiplier = DefaultBFDMultiplier
		}
		if b.TxInterval == 0 {
			b.TxInterval = DefaultBFDInterval
		}
		if b.RxInterval == 0 {
			b.RxInterval = DefaultBFDInterval
		}
		p.BFD = &b
	}
	return p
}
