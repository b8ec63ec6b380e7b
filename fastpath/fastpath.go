// Package fastpath makes the kernel forward the data datagrams of
// established proxy sessions, while everything that needs a decision stays in
// udpmux: an nftables table of udpmux's own, whose map elements rewrite a
// session's datagrams to the addresses the userspace path uses (client ↔
// listener address, udpmux's upstream address:port ↔ backend), keyed on the
// full 4-tuples both ways and on the protocol's type byte, so that control
// messages (WireGuard handshakes, OpenVPN control opcodes, QUIC long
// headers) and datagrams from any other address still reach udpmux.
//
// How the kernel forwards (see nft_linux.go): a datagram that matches a
// session's element in the prerouting hook, before conntrack, is untracked,
// marked (Mark) and gets its destination rewritten, so that the kernel
// routes it on to the backend (or the client); in the postrouting hook a
// marked datagram gets its source rewritten by a second map, keyed on the
// rewritten 4-tuple, and loses the mark. A datagram that enters the host
// with the rewritten addresses but without the mark (a forger sending
// straight to the backend through this host) is not touched: only what
// passed the first match, on the full original 4-tuple, is rewritten.
//
// Elements carry counters, which a Table polls off the packet path; a
// Table installs, moves and removes elements from one goroutine in
// nftables transactions, at a bounded rate and up to a bounded number. The
// table outlives the process that made it, so that the kernel keeps
// forwarding across an upgrade or a crash; the next process adopts it (see
// Open) and one that stops for good removes it (Table.Close).
//
// The udpmux daemon opens one Table for its listeners with `fast_path:
// nftables`; a program that embeds the proxy does the same and sets it in
// each such listener's proxy.Config (FastPath).
package fastpath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Kind says which datagrams of a session are data, forwarded by the
// kernel; the others go to udpmux. A listener's dissector gives its
// sessions' family of kinds (Family): one kind, but for OpenVPN, whose
// sessions each have the kind of the key their data is on.
type Kind uint8

// The kinds, by the listener's dissector.
const (
	// Any: every datagram of the session (dissector flow).
	Any Kind = iota
	// WireGuard: transport messages (type 4, reserved bytes zero); the
	// handshake initiation, response and cookie reply (types 1–3) go to
	// udpmux.
	WireGuard
	// QUIC: short-header packets (header form 0, the fixed bit either way:
	// a peer that got the grease_quic_bit transport parameter clears it at
	// random, RFC 9287, as quic-go does); long headers (Initial,
	// Handshake, 0-RTT, Retry) and version negotiation go to udpmux.
	QUIC
	// OpenVPN: P_DATA_V2 (opcode 9) on key ID 0, and OpenVPN+k on key ID k
	// (OpenVPNKey); control packets, acks, P_DATA_V1 and data on the
	// session's other key IDs go to udpmux. A key ID of its own per kind
	// lets udpmux see the first packets of a renegotiated key, and so the
	// packet-ids that vouch for a moving client (package
	// dissect/openvpn) on every key; the family is OpenVPN.
	OpenVPN
	numKinds = OpenVPN + openVPNKeys
)

// openVPNKeys is the number of OpenVPN key IDs: the low three bits of the
// first byte.
const openVPNKeys = 8

// OpenVPNKey returns the kind of OpenVPN data on key ID id.
func OpenVPNKey(id uint8) Kind { return OpenVPN + Kind(id%openVPNKeys) }

// Family returns k's family: OpenVPN for every OpenVPN key, k otherwise.
func (k Kind) Family() Kind {
	if k >= OpenVPN && k < numKinds {
		return OpenVPN
	}
	return k
}

// kinds returns the kinds of family f.
func (f Kind) kinds() []Kind {
	if f == OpenVPN {
		ks := make([]Kind, openVPNKeys)
		for i := range ks {
			ks[i] = OpenVPNKey(uint8(i))
		}
		return ks
	}
	return []Kind{f}
}

// String returns the kind's name, as the table's map names use it.
func (k Kind) String() string {
	switch {
	case k >= OpenVPN && k < numKinds:
		return fmt.Sprintf("openvpn%d", k-OpenVPN)
	case k < OpenVPN:
		return [...]string{"any", "wireguard", "quic"}[k]
	}
	return fmt.Sprintf("kind%d", uint8(k))
}

// TypeByte returns the first byte of every datagram of kind k (an OpenVPN
// key's), and false for a kind whose datagrams do not share one.
func (k Kind) TypeByte() (byte, bool) {
	if k.Family() == OpenVPN {
		return opDataV2<<3 | byte(k-OpenVPN), true
	}
	return 0, false
}

// opDataV2 is OpenVPN's P_DATA_V2 opcode.
const opDataV2 = 9

// KindOf returns the kind of p, a UDP payload of a session of family f,
// and whether the kernel forwards it once the session is in the table with
// that kind: the type-byte match of the table's rules (nft_linux.go,
// dataByte), in Go.
func KindOf(f Kind, p []byte) (Kind, bool) {
	switch f {
	case Any:
		return Any, true
	case WireGuard:
		return WireGuard, len(p) >= 4 && p[0] == 4 && p[1] == 0 && p[2] == 0 && p[3] == 0
	case OpenVPN:
		if len(p) >= 1 && p[0]>>3 == opDataV2 {
			return OpenVPNKey(p[0] & (openVPNKeys - 1)), true
		}
	case QUIC:
		return QUIC, len(p) >= 1 && p[0]&0x80 == 0
	}
	return f, false
}

// Flow is what the kernel needs to forward one session both ways with the
// userspace path's addresses.
type Flow struct {
	// Kind says which of the session's datagrams are data.
	Kind Kind
	// Client is the session's client; Local the listener address it
	// writes to.
	Client, Local netip.AddrPort
	// Source is the local address of the session's upstream socket, the
	// client as the backend sees it; Backend the backend.
	Source, Backend netip.AddrPort
}

// valid reports whether the kernel can forward f: IPv4 addresses only (the
// table is of family ip), no port 0, and a backend on another host: a
// datagram to a local backend is delivered, not routed, and the
// postrouting rewrite would never see it.
func (f Flow) valid() error {
	for _, a := range [...]netip.AddrPort{f.Client, f.Local, f.Source, f.Backend} {
		if ip := a.Addr().Unmap(); !ip.Is4() || ip.IsUnspecified() || a.Port() == 0 {
			return fmt.Errorf("fastpath: %s: only IPv4 addresses (not 0.0.0.0) with a port are forwarded", a)
		}
	}
	if f.Kind >= numKinds {
		return fmt.Errorf("fastpath: unknown kind %d", f.Kind)
	}
	if b := f.Backend.Addr().Unmap(); b.IsLoopback() || b == f.Source.Addr().Unmap() {
		return ErrLocalBackend
	}
	return nil
}

// family returns f with its kind's family.
func (f Flow) family() Flow {
	f.Kind = f.Kind.Family()
	return f
}

// unmap returns f with IPv4-mapped IPv6 addresses as IPv4 ones.
func (f Flow) unmap() Flow {
	u := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	return Flow{Kind: f.Kind, Client: u(f.Client), Local: u(f.Local), Source: u(f.Source), Backend: u(f.Backend)}
}

// ErrLocalBackend: the session's backend is on this host (or is a
// loopback address), where the kernel delivers datagrams instead of routing
// them; such sessions stay in userspace.
var ErrLocalBackend = errors.New("fastpath: the backend is on this host: its datagrams are delivered, not routed, so the kernel cannot forward them")

// Counts are what the kernel forwarded for a session: from the client
// (Rx) and to it (Tx).
type Counts struct {
	RxPackets, RxBytes, TxPackets, TxBytes uint64
}

// Sub returns c - o, field by field.
func (c Counts) Sub(o Counts) Counts {
	return Counts{c.RxPackets - o.RxPackets, c.RxBytes - o.RxBytes, c.TxPackets - o.TxPackets, c.TxBytes - o.TxBytes}
}

// Add returns c + o, field by field.
func (c Counts) Add(o Counts) Counts {
	return Counts{c.RxPackets + o.RxPackets, c.RxBytes + o.RxBytes, c.TxPackets + o.TxPackets, c.TxBytes + o.TxBytes}
}

// Zero reports whether nothing was counted.
func (c Counts) Zero() bool { return c == Counts{} }

// State is where an Entry stands.
type State uint32

// The states of an Entry.
const (
	// Pending: queued, not in the kernel yet.
	Pending State = iota
	// Installed: the kernel forwards the session's data.
	Installed
	// Refused: not installed, and it will not be: its keys clash with
	// another session's, or the kernel refused the elements. The session
	// stays in userspace.
	Refused
	// Removed: taken out of the kernel (or never put in).
	Removed
)

var stateNames = [...]string{"pending", "installed", "refused", "removed"}

// String returns the state's name.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Config configures a Table.
type Config struct {
	// Name is the nftables table's name (family ip); empty means "udpmux".
	Name string
	// Max bounds the sessions the kernel forwards (sessions.max); 0 means
	// DefaultMax.
	Max int
	// Rate bounds installs per second, in bursts of a tenth of it, so that
	// a flood of new sessions never becomes a flood of netlink messages;
	// 0 means DefaultRate. Moves and removals are not rationed.
	Rate int
	// Kinds are the families of kinds (Kind.Family) of the sessions this
	// process offloads; the table matches the type bytes of these only (and
	// of those it adopts).
	Kinds []Kind
	// Poll is how often element counters are read (and the table
	// reconciled with the kernel); 0 means DefaultPoll. A reading takes
	// time that grows with the table (about 12 ms per 1000 sessions, most
	// of it the kernel's dump), so the table waits at least pollShare
	// times as long as the last reading took: its goroutine never spends
	// more than a twentieth of a core on them, and reads less often than
	// Poll beyond about 5000 sessions — but never less often than MaxPoll.
	Poll time.Duration
	// MaxPoll, if positive, bounds the wait between two readings however
	// long they take: what renews the idle deadline of the sessions the
	// kernel carries (the daemon sets a quarter of the shortest idle
	// timeout of its fast-path listeners).
	MaxPoll time.Duration
	// OrphanIdle is how long an adopted element that no session claims
	// stays while the kernel forwards nothing for it; 0 means
	// DefaultOrphanIdle.
	OrphanIdle time.Duration
	// TTL is written into every datagram the kernel forwards, as the
	// userspace path's sockets send them; 0 means the host's
	// net.ipv4.ip_default_ttl.
	TTL uint8
}

// Defaults of Config.
const (
	DefaultName       = "udpmux"
	DefaultMax        = 1 << 20
	DefaultRate       = 2000
	DefaultPoll       = time.Second
	DefaultOrphanIdle = 3 * time.Minute
)

// Mark is the packet mark bit that the table sets on a datagram it
// rewrites in prerouting and clears in postrouting. Other rules of the
// host must neither set nor clear it.
const Mark = 0x10000000

// Stats are a Table's counters. The JSON keys are the fields' names in
// snake_case.
type Stats struct {
	// Offloaded is the number of sessions the kernel forwards now, of which
	// Adopted were found in the table when this process started and no
	// session of this process has claimed yet.
	Offloaded int `json:"offloaded"`
	Adopted   int `json:"adopted"`
	// Installs, Moves and Removals count the transactions' changes;
	// Errors netlink transactions that failed.
	Installs uint64 `json:"installs"`
	Moves    uint64 `json:"moves"`
	Removals uint64 `json:"removals"`
	Errors   uint64 `json:"errors"`
	// RefusedFull counts offloads refused by Max, RefusedConflict those
	// whose keys another session's elements hold, RefusedLocal those of
	// sessions whose backend is on this host or that are not IPv4;
	// Deferred counts installs Rate put off (each once; they go in
	// later).
	RefusedFull     uint64 `json:"refused_full"`
	RefusedConflict uint64 `json:"refused_conflict"`
	RefusedLocal    uint64 `json:"refused_local"`
	Deferred        uint64 `json:"deferred"`
	// OrphansRemoved counts adopted sessions removed: idle for
	// OrphanIdle, or replaced by a session of this process for the same
	// client; Strays elements of no session deleted (left by a
	// predecessor's incomplete transaction or a failed one).
	OrphansRemoved uint64 `json:"orphans_removed"`
	Strays         uint64 `json:"strays"`
	// Reinstalls counts sessions whose elements were found missing from
	// the kernel and put back.
	Reinstalls uint64 `json:"reinstalls"`
	// Remade counts the times the table was found deleted (a firewall
	// reload that flushes the rule set) and made again.
	Remade uint64 `json:"remade"`
	// Forwarded is what the kernel forwarded for the sessions it forwards
	// now (and those it forwarded since this process started).
	RxPackets uint64 `json:"rx_datagrams"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_datagrams"`
	TxBytes   uint64 `json:"tx_bytes"`
	// Polls counts the reads of the counters.
	Polls uint64 `json:"polls"`
}
