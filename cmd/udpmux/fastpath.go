package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/proxy"
)

// fastPaths are the proxy listeners with fast_path: nftables, which share
// one table; the daemon opens it before the server starts and sets it in
// each (openFastPath).
type fastPaths struct {
	// key names the first such listener's fast_path, for what validate
	// refuses.
	key   string
	paths []*proxy.FastPath
	// idle is the longest idle timeout of those listeners: how long what
	// a crashed predecessor left in the kernel stays without traffic while
	// no session claims it.
	idle time.Duration
	// minIdle is the shortest: the kernel's counters must be read well
	// within it, or the sessions it carries would idle out.
	minIdle time.Duration
}

// fastPathKind checks a listener's fast_path key: nil when off, otherwise
// the kind of datagram its dissector says are data.
func (l *listenerConfig) fastPathKind(key func(string) string, addr netip.AddrPort) (*fastpath.Kind, error) {
	switch l.FastPath {
	case "", "off":
		return nil, nil
	case "nftables":
	default:
		return nil, fmt.Errorf("%s: %q is not one of off, nftables", key("fast_path"), l.FastPath)
	}
	if l.Handler != "proxy" {
		return nil, fmt.Errorf("%s: only the proxy handler has a fast path", key("fast_path"))
	}
	if l.Source == sourceClient {
		// The backends' replies to a client's address are delivered to
		// udpmux's transparent sockets by policy routing, not routed on.
		return nil, fmt.Errorf("%s: not with source: client: the backends' replies to clients' addresses are delivered to this host by its policy routing, which the kernel's forwarding would have to route on", key("fast_path"))
	}
	if a := addr.Addr(); a.Is6() && !a.Is4In6() && !a.IsUnspecified() {
		return nil, fmt.Errorf("%s: the fast path forwards IPv4 only; %s is an IPv6 address", key("fast_path"), addr)
	}
	var k fastpath.Kind
	switch l.Dissector {
	case "", "flow":
		k = fastpath.Any
	case "wireguard":
		k = fastpath.WireGuard
	case "openvpn":
		k = fastpath.OpenVPN
	case "quic":
		k = fastpath.QUIC
	default:
		return nil, fmt.Errorf("%s: dissector %s has no data datagrams to forward", key("fast_path"), l.Dissector)
	}
	return &k, nil
}

// checkFastPath refuses a fast path that cannot work on this host, naming
// the key: validate's check, which the daemon makes too but survives (it
// serves without the fast path, and says so).
func (c *config) checkFastPath() error {
	if c.fast == nil || len(c.fast.paths) == 0 {
		return nil
	}
	if err := fastpath.Check(); err != nil {
		return fmt.Errorf("%s: %w", c.fast.key, err)
	}
	return nil
}

// fastPathTable is the name of the process's table: one per control
// socket, so that a successor finds its predecessor's and two udpmux
// processes of one host (each with its own control socket) never share one.
func (c *config) fastPathTable() string {
	if c.controlSocket == defaultControlSocket {
		return fastpath.DefaultName
	}
	return fmt.Sprintf("%s-%08x", fastpath.DefaultName, uint32(xxhash.Sum64String(c.controlSocket)))
}

// openFastPath opens the table of the proxy listeners with a fast path,
// adopting what a predecessor left, and sets it in each; nil if none has
// one. A table that cannot be had (no CAP_NET_ADMIN, no nf_tables, IPv4
// forwarding off) leaves them serving in userspace, logged.
func (c *config) openFastPath(log *slog.Logger) *fastpath.Table {
	if c.fast == nil || len(c.fast.paths) == 0 {
		return nil
	}
	cfg := fastpath.Config{Name: c.fastPathTable(), Max: c.mux.MaxSessions, OrphanIdle: c.fast.idle, MaxPoll: c.fast.minIdle / 4}
	for _, p := range c.fast.paths {
		cfg.Kinds = append(cfg.Kinds, p.Kind)
	}
	err := fastpath.Check()
	var t *fastpath.Table
	if err == nil {
		t, err = fastpath.Open(cfg, log)
	}
	if err != nil {
		log.Warn("fast path unavailable: every datagram stays in userspace", "key", c.fast.key, "err", err)
		return nil
	}
	for _, p := range c.fast.paths {
		p.Table = t
	}
	log.Info("fast path on: the kernel forwards established sessions' data", "table", cfg.Name, "listeners", len(c.fast.paths))
	return t
}
