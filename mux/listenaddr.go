//go:build linux

package mux

import (
	"context"
	"net"
	"net/netip"
	"os"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// ipNetwork returns the network to look network's host names up in, or an
// error if Listen does not serve network.
func ipNetwork(network string) (string, error) {
	if ipNet := map[string]string{"udp": "ip", "udp4": "ip4", "udp6": "ip6"}[network]; ipNet != "" {
		return ipNet, nil
	}
	return "", net.UnknownNetworkError(network)
}

// resolveListen turns Listen's network and address into the address to
// bind, as net resolves a listening address: a name's IPv4 address first
// (looked up in ipNet); for an empty host the wildcard of the network's
// family, which for "udp" is IPv6's, taking IPv4 too, where the host has
// IPv6.
func resolveListen(ctx context.Context, network, ipNet, address string) (netip.AddrPort, error) {
	host, service := "", "0"
	if address != "" {
		var err error
		if host, service, err = net.SplitHostPort(address); err != nil {
			return netip.AddrPort{}, err
		}
	}
	port, err := net.DefaultResolver.LookupPort(ctx, network, service)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ip netip.Addr
	switch {
	case host == "" && (network == "udp4" || network == "udp" && !udpsys.Detect().DualStack):
		ip = netip.IPv4Unspecified()
	case host == "":
		ip = netip.IPv6Unspecified()
	default:
		if ip, err = netip.ParseAddr(host); err != nil {
			ips, err := net.DefaultResolver.LookupNetIP(ctx, ipNet, host)
			if err != nil {
				return netip.AddrPort{}, err
			}
			ip = ips[0]
			for _, a := range ips {
				if a.Unmap().Is4() {
					ip = a
					break
				}
			}
		}
	}
	if ip.Zone() != "" {
		// Sockets' addresses are read and written without zones (udpsys).
		return netip.AddrPort{}, &net.AddrError{Err: "IPv6 zones are not supported", Addr: host}
	}
	if !fitsNetwork(network, ip) {
		return netip.AddrPort{}, &net.AddrError{Err: "no suitable address found", Addr: address}
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// fitsNetwork reports whether ip is of the family network names.
func fitsNetwork(network string, ip netip.Addr) bool {
	switch network {
	case "udp4":
		return ip.Unmap().Is4()
	case "udp6":
		return ip.Is6() && !ip.Is4In6()
	}
	return true
}

// boundPattern is what an address says of sockets bound already: a port,
// and a literal IP or, with none, a wildcard of either family, as in a
// .socket unit's ListenDatagram=.
type boundPattern struct {
	ip   netip.Addr
	port int
}

func parseBoundPattern(address string) (boundPattern, error) {
	host, service, err := net.SplitHostPort(address)
	if err != nil {
		return boundPattern{}, err
	}
	var p boundPattern
	if p.port, err = net.DefaultResolver.LookupPort(context.Background(), "udp", service); err != nil {
		return boundPattern{}, err
	}
	if host != "" {
		if p.ip, err = netip.ParseAddr(host); err != nil {
			return boundPattern{}, &net.AddrError{Err: "not a literal IP address", Addr: host}
		}
	}
	return p, nil
}

// matches reports whether a socket bound to b is one p describes.
func (p boundPattern) matches(b netip.AddrPort) bool {
	local := b.Addr().Unmap()
	if p.ip.IsValid() {
		return int(b.Port()) == p.port && local == p.ip.Unmap()
	}
	return int(b.Port()) == p.port && local.IsUnspecified()
}

// checkSocketsAddress checks Listen's network and address against the
// sockets it was given: an empty address stands for theirs.
func checkSocketsAddress(network, address string, socks []*os.File) error {
	b, err := udpsys.InspectFile(socks[0])
	if err != nil {
		return nil // New says which socket is no bound UDP one, and why
	}
	if !fitsNetwork(network, b.Local.Addr()) {
		return &net.AddrError{Err: "the sockets given are of another family, bound to " + b.Local.String(), Addr: address}
	}
	if address == "" {
		return nil
	}
	p, err := parseBoundPattern(address)
	if err != nil {
		return err
	}
	if !p.matches(b.Local) {
		return &net.AddrError{Err: "the sockets given are bound to " + b.Local.String(), Addr: address}
	}
	return nil
}
