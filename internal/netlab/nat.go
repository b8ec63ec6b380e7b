//go:build linux

package netlab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// NAT emulation. A namespace that holds a client can play the NAT gateway in
// front of it, so that tests can move a running flow to another source port
// (NAT rebinding) or another source address (roaming) without the client
// program noticing: the program keeps its socket, and only the address and
// port that the far side sees change, exactly as behind a real NAT whose
// mapping expired or whose public address changed.
//
// It is built from an nftables table of its own (natTable) in the namespace
// and the namespace's conntrack table:
//
//   - a source NAT rule rewrites the UDP flow that leaves one interface from
//     a given source port (the program's socket) to the mapping; any other
//     UDP flow leaving there (a new socket, such as a client that
//     reconnects) gets the mapping's address and keeps its port where it
//     can, as a NAT gives a new flow a mapping of its own: mapping it to
//     the same address and port as the first flow would clash with that
//     flow's conntrack entry, and the kernel would drop its datagrams (the
//     program sees EPERM on send);
//   - NAT decisions are made once per conntrack entry, so changing the rule
//     alone would not move a running flow: SNAT therefore also deletes the
//     namespace's UDP conntrack entries, and the flow's next datagram makes a
//     new entry that takes the new mapping;
//   - UDP arriving on that interface that belongs to no conntrack entry
//     (ct state new) is dropped silently. A NAT only creates mappings for
//     traffic going out, and forgets the old one: datagrams still on their
//     way to the old mapping must vanish, neither reach the program (as they
//     would when the old mapping was the socket's own port) nor draw an ICMP
//     port unreachable. Without this rule such a datagram, arriving between
//     the deletion and the flow's next outgoing one, would also create an
//     entry of its own with no NAT, which the flow's outgoing datagrams then
//     match, so that the move would silently not happen.
//
// One mapping per namespace: every SNAT call replaces the previous one.
// Needs the nft (nftables) and conntrack (conntrack) programs; skip tests
// without them with RequireTools(t, ToolNft, ToolConntrack).

// natTable is the nftables table (family ip) that SNAT manages.
const natTable = "netlab_nat"

// natTimeout bounds each nft and conntrack command.
const natTimeout = 10 * time.Second

// SNAT makes the namespace a NAT for the UDP it sends out of dev: from now
// on the UDP datagrams leaving dev from source port sport get the source
// address to.Addr() and, unless to.Port() is 0, the source port to.Port();
// other UDP datagrams leaving dev get the address and keep their ports
// where they can. This replaces any mapping set before. Flows already
// running take the new mapping with their next outgoing datagram;
// datagrams that arrive for the old mapping, or for no mapping at all, are
// dropped (see the package's NAT emulation notes). The address should be
// one of the namespace's own (add a second one with AddAddr to change the
// source address) so that replies reach it.
func (n *Namespace) SNAT(dev string, sport uint16, to netip.AddrPort) {
	n.lab.t.Helper()
	if !to.Addr().Is4() {
		n.lab.t.Fatalf("netlab: SNAT to %v: only IPv4 addresses are supported", to)
	}
	if sport == 0 {
		n.lab.t.Fatalf("netlab: SNAT of source port 0: name the socket's port")
	}
	target := to.Addr().String()
	if to.Port() != 0 {
		target = to.String()
	}
	n.Nft(snatScript(dev, sport, target, to.Addr().String()))
	n.FlushConntrack("udp")
}

// snatScript is the nft script that installs (or replaces) the mapping.
// Declaring the table and chains is idempotent; the flushes and new rules
// are applied in one transaction, so no datagram sees a half-built table.
func snatScript(dev string, sport uint16, target, addr string) string {
	return fmt.Sprintf(`table ip %[1]s {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
	chain input { type filter hook input priority filter; policy accept; }
}
flush chain ip %[1]s postrouting
flush chain ip %[1]s input
add rule ip %[1]s postrouting oifname %[2]q udp sport %[3]d counter snat ip to %[4]s
add rule ip %[1]s postrouting oifname %[2]q meta l4proto udp counter snat ip to %[5]s
add rule ip %[1]s input iifname %[2]q meta l4proto udp ct state new counter drop
`, natTable, dev, sport, target, addr)
}

// ClearSNAT removes the mapping set by SNAT, if any, and deletes the UDP
// conntrack entries, so that flows go on from their sockets' own addresses.
func (n *Namespace) ClearSNAT() {
	n.lab.t.Helper()
	out, err := n.nft("list", "tables", "ip")
	if err != nil {
		n.lab.t.Fatalf("netlab: in %s: nft list tables: %v", n.name, err)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "table ip "+natTable {
			n.Nft("delete table ip " + natTable + "\n")
		}
	}
	n.FlushConntrack("udp")
}

// FlushConntrack deletes the namespace's conntrack entries of protocol proto
// ("udp", "tcp", "icmp"), so that the flows' next packets are seen as new
// and go through NAT again. Having none to delete is not an error.
func (n *Namespace) FlushConntrack(proto string) {
	n.lab.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natTimeout)
	defer cancel()
	out, err := n.CommandContext(ctx, "conntrack", "-D", "-p", proto).CombinedOutput()
	// conntrack exits 1 when nothing matched.
	if err != nil && !strings.Contains(string(out), " 0 flow entries have been deleted") {
		n.lab.t.Fatalf("netlab: in %s: conntrack -D -p %s: %v\n%s", n.name, proto, err, out)
	}
}

// Nft runs an nft script (nft -f -) inside the namespace; it fails the test
// on error.
func (n *Namespace) Nft(script string) {
	n.lab.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natTimeout)
	defer cancel()
	cmd := n.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.lab.t.Fatalf("netlab: in %s: nft -f -: %v\n%s\nscript:\n%s", n.name, err, out, script)
	}
}

// nft runs nft with args inside the namespace and returns its output.
func (n *Namespace) nft(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), natTimeout)
	defer cancel()
	out, err := n.CommandContext(ctx, "nft", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
