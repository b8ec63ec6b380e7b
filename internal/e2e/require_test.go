//go:build linux

package e2e

import (
	"os"
	"testing"

	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/internal/prereq"
)

// The require* helpers of the end-to-end tests, all in one place. Each skips
// the test with a message naming what is missing and the Debian package that
// brings it, or, under CI=true, fails it (prereq.Missing).

// requireOpenVPN skips the test unless OpenVPN is installed.
func requireOpenVPN(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(openvpnPath); err != nil {
		prereq.Missingf(t, "needs OpenVPN at %s (apt-get install -y openvpn): %v", openvpnPath, err)
	}
	requireTun(t, "OpenVPN's")
}

// requireTun skips the test unless tun devices can be made.
func requireTun(t testing.TB, whose string) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		prereq.Missingf(t, "needs /dev/net/tun for %s tun devices: %v", whose, err)
	}
}

// requireRoaming skips a roaming or spoofing test unless everything it
// runs is there: root and iproute2's ip, ping, nft and conntrack (the NAT
// in front of each client), and WireGuard in userspace (wireguard-go, wg,
// tun devices; the kernel module is not used) or OpenVPN. Missing programs
// are named all at once.
func requireRoaming(t testing.TB, wireguard bool) {
	t.Helper()
	netlab.RequireRoot(t)
	tools := []netlab.Tool{netlab.ToolPing, netlab.ToolNft, netlab.ToolConntrack}
	if wireguard {
		tools = append(tools, netlab.ToolWireGuardGo, netlab.ToolWG)
	}
	netlab.RequireTools(t, tools...)
	if wireguard {
		requireTun(t, "wireguard-go's")
	} else {
		requireOpenVPN(t)
	}
}
