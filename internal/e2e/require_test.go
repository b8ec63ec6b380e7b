package e2e

import (
	"os"
	"testing"

	"github.com/udpmux/udpmux/internal/netlab"
)

// The require* helpers of the end-to-end tests, all in one place. Each skips
// the test (never fails it) with a message naming what is missing and the
// Debian package that brings it.

// requireOpenVPN skips the test unless OpenVPN is installed.
func requireOpenVPN(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(openvpnPath); err != nil {
		t.Skipf("needs OpenVPN at %s (apt-get install -y openvpn): %v", openvpnPath, err)
	}
	requireTun(t, "OpenVPN's")
}

// requireTun skips the test unless tun devices can be made.
func requireTun(t testing.TB, whose string) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun for %s tun devices: %v", whose, err)
	}
}

// requireRoot skips the test unless it runs as root with iproute2's ip.
func requireRoot(t testing.TB) {
	t.Helper()
	netlab.RequireRoot(t)
}

// requirePing skips the test unless iputils' ping is installed.
func requirePing(t testing.TB) {
	t.Helper()
	netlab.RequireTools(t, netlab.ToolPing)
}

// requireNAT skips the test unless the namespaces can play NAT gateways
// (netlab's SNAT): nftables and conntrack.
func requireNAT(t testing.TB) {
	t.Helper()
	netlab.RequireTools(t, netlab.ToolNft, netlab.ToolConntrack)
}

// requireWireGuard skips the test unless WireGuard can run in userspace:
// wireguard-go, wg and tun devices. The kernel module is not used.
func requireWireGuard(t testing.TB) {
	t.Helper()
	netlab.RequireTools(t, netlab.ToolWireGuardGo, netlab.ToolWG)
	requireTun(t, "wireguard-go's")
}

// requireRoaming skips a roaming test unless everything it runs is
// there: root and ip, ping, nft and conntrack, and WireGuard (wireguard
// set) or OpenVPN.
func requireRoaming(t testing.TB, wireguard bool) {
	t.Helper()
	requireRoot(t)
	netlab.RequireTools(t, netlab.ToolPing, netlab.ToolNft, netlab.ToolConntrack)
	if wireguard {
		requireWireGuard(t)
	} else {
		requireOpenVPN(t)
	}
}
