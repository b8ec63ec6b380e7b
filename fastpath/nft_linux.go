package fastpath

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table's layout, family ip:
//
//	map fwd_<kind> { typeof ip saddr . udp sport . ip daddr . udp dport :
//	                 ip daddr . udp dport . meta mark; counter; size 2·Max }
//	map src        { typeof ip saddr . udp sport . ip daddr . udp dport :
//	                 ip saddr . udp sport; size 2·Max }
//	chain pre  { type filter hook prerouting priority raw;
//	             per kind: udp, <data type byte>, lookup @fwd_<kind> →
//	             notrack, mark |= Mark, ip daddr set, udp dport set }
//	chain post { type filter hook postrouting priority srcnat;
//	             mark & Mark, lookup @src → mark &= ^Mark, ip saddr set,
//	             udp sport set, ip ttl set TTL;
//	             mark & Mark → counter, drop }
//
// A session has four elements: in fwd_<kind>, (client, local) → (backend,
// up) and (backend, source) → (client, down); in src, (client, backend) →
// source and (backend, client) → local. The destination is rewritten in
// prerouting, before the route lookup, so that the kernel routes the
// datagram to its new destination; the source only in postrouting, since a
// datagram that arrives with a local source address is dropped as a martian
// by the route lookup. The third field of fwd's data says which direction
// an element is, so that a successor can rebuild the sessions (adopt).
//
// The last post rule drops a marked datagram whose src element is gone (the
// session was removed between its two hooks): sent on, it would carry the
// client's address to the backend.

// Registers: the 32-bit ones, so that a 16-byte key spans four of them
// (the 128-bit NFT_REG_1 is NFT_REG32_00..03 again: not for scratch).
const (
	regVerdict = 20 // NFT_REG32_12, scratch
	regKey     = 8  // NFT_REG32_00..03: the 4-tuple
	regData    = 12 // NFT_REG32_04..06: the element's data
)

const (
	keyLen = 16 // ip . port(padded) . ip . port(padded)
	fwdLen = 12 // ip . port(padded) . direction
	srcLen = 8  // ip . port(padded)

	dirUp   = 0 // from the client, to the backend
	dirDown = 1 // from the backend, to the client

	l4csumPseudoHeader = 1 // NFT_PAYLOAD_L4CSUM_PSEUDOHDR
)

// key is an element key: a datagram's source and destination as the
// kernel sees them in the hook.
type key [keyLen]byte

// tupleKey returns the key of a datagram from a to b.
func tupleKey(a, b netip.AddrPort) key {
	var k key
	putAddrPort(k[0:8], a)
	putAddrPort(k[8:16], b)
	return k
}

// addrs returns the two addresses of k.
func (k key) addrs() (a, b netip.AddrPort) { return getAddrPort(k[0:8]), getAddrPort(k[8:16]) }

func putAddrPort(b []byte, a netip.AddrPort) {
	ip := a.Addr().Unmap().As4()
	copy(b[0:4], ip[:])
	binary.BigEndian.PutUint16(b[4:6], a.Port())
}

func getAddrPort(b []byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[0:4])), binary.BigEndian.Uint16(b[4:6]))
}

// fwdData returns the data of a fwd element: the new destination and the
// direction.
func fwdData(to netip.AddrPort, dir uint32) []byte {
	b := make([]byte, fwdLen)
	putAddrPort(b[0:8], to)
	binary.BigEndian.PutUint32(b[8:12], dir)
	return b
}

// srcData returns the data of a src element: the new source.
func srcData(from netip.AddrPort) []byte {
	b := make([]byte, srcLen)
	putAddrPort(b, from)
	return b
}

// element is one map element of a session's four.
type element struct {
	set  *nftables.Set
	key  key
	data []byte
}

// elements returns f's four elements, those of fwd first.
func (t *Table) elements(f Flow) [4]element {
	fwd := t.fwd[f.Kind]
	return [4]element{
		{fwd, tupleKey(f.Client, f.Local), fwdData(f.Backend, dirUp)},
		{fwd, tupleKey(f.Backend, f.Source), fwdData(f.Client, dirDown)},
		{t.src, tupleKey(f.Client, f.Backend), srcData(f.Source)},
		{t.src, tupleKey(f.Backend, f.Client), srcData(f.Local)},
	}
}

var (
	tupleType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService)
	fwdType   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeMark)
	srcType   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
)

// schema declares the table, its maps and chains in cc's batch (each is
// created if missing and left as it is, elements included, if present) and
// replaces the chains' rules, so that one transaction turns an adopted
// table into this process's without a moment in which nothing forwards.
func (t *Table) schema(cc *nftables.Conn, kinds []Kind) error {
	t.table = cc.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: t.cfg.Name})
	size := uint32(min(2*t.cfg.Max, 1<<31-1))
	for k := range numKinds {
		t.fwd[k] = &nftables.Set{Table: t.table, Name: "fwd_" + k.String(), IsMap: true, Concatenation: true,
			KeyType: tupleType, DataType: fwdType, Counter: true, Size: size}
		if err := cc.AddSet(t.fwd[k], nil); err != nil {
			return err
		}
	}
	t.src = &nftables.Set{Table: t.table, Name: "src", IsMap: true, Concatenation: true,
		KeyType: tupleType, DataType: srcType, Size: size}
	if err := cc.AddSet(t.src, nil); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	pre := cc.AddChain(&nftables.Chain{Name: "pre", Table: t.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept})
	post := cc.AddChain(&nftables.Chain{Name: "post", Table: t.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	cc.FlushChain(pre)
	cc.FlushChain(post)
	for _, k := range kinds {
		cc.AddRule(&nftables.Rule{Table: t.table, Chain: pre, Exprs: preRule(k, t.fwd[k])})
	}
	cc.AddRule(&nftables.Rule{Table: t.table, Chain: post, Exprs: postRule(t.src, t.cfg.TTL)})
	cc.AddRule(&nftables.Rule{Table: t.table, Chain: post, Exprs: append(marked(), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	return nil
}

// loadTuple loads a UDP datagram's 4-tuple into regKey.
func loadTuple() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regVerdict},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: regKey + 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Payload{DestRegister: regKey + 2, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: regKey + 3, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// dataByte returns the match of kind's data datagrams, on the first bytes
// of the UDP payload (transport header offset 8); nil for Any.
func dataByte(k Kind) []expr.Any {
	load := func(n uint32) expr.Any {
		return &expr.Payload{DestRegister: regVerdict, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: n}
	}
	masked := func(mask, want byte) []expr.Any {
		return []expr.Any{load(1),
			&expr.Bitwise{SourceRegister: regVerdict, DestRegister: regVerdict, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{want}}}
	}
	if b, ok := k.TypeByte(); ok {
		return []expr.Any{load(1), &expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{b}}}
	}
	switch k {
	case WireGuard:
		return []expr.Any{load(4), &expr.Cmp{Op: expr.CmpOpEq, Register: regVerdict, Data: []byte{4, 0, 0, 0}}}
	case QUIC:
		return masked(0x80, 0) // header form 0 (short), the fixed bit either way
	}
	return nil
}

// preRule is kind's rule in prerouting.
func preRule(k Kind, fwd *nftables.Set) []expr.Any {
	e := loadTuple()
	// The type byte before the lookup, so that the elements' counters count
	// only what the kernel forwards.
	e = append(e, dataByte(k)...)
	e = append(e,
		&expr.Lookup{SourceRegister: regKey, DestRegister: regData, IsDestRegSet: true, SetName: fwd.Name, SetID: fwd.ID},
		&expr.Notrack{},
	)
	e = append(e, setMark(true)...)
	return append(e, rewrite(16, 2)...) // destination address and port
}

// rewrite writes the address:port of the lookup's data (regData) into the
// datagram at the IPv4 header's addrOffset and the UDP header's portOffset,
// updating the IPv4 and UDP checksums.
func rewrite(addrOffset, portOffset uint32) []expr.Any {
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regData, Base: expr.PayloadBaseNetworkHeader,
			Offset: addrOffset, Len: 4, CsumType: expr.CsumTypeInet, CsumOffset: 10, CsumFlags: l4csumPseudoHeader},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regData + 1, Base: expr.PayloadBaseTransportHeader,
			Offset: portOffset, Len: 2, CsumType: expr.CsumTypeInet, CsumOffset: 6},
	}
}

// postRule rewrites the source of a datagram marked in prerouting.
func postRule(src *nftables.Set, ttl uint8) []expr.Any {
	e := append(marked(), loadTuple()...)
	e = append(e, &expr.Lookup{SourceRegister: regKey, DestRegister: regData, IsDestRegSet: true, SetName: src.Name, SetID: src.ID})
	e = append(e, setMark(false)...)
	e = append(e, rewrite(12, 0)...) // source address and port
	return append(e,
		// The TTL the userspace path's sockets send with, rather than the
		// client's less one, so that the backend cannot tell the paths apart.
		&expr.Immediate{Register: regVerdict, Data: []byte{ttl}},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regVerdict, Base: expr.PayloadBaseNetworkHeader,
			Offset: 8, Len: 1, CsumType: expr.CsumTypeInet, CsumOffset: 10},
	)
}

// marked matches a datagram that carries Mark.
func marked() []expr.Any {
	var mark [4]byte
	binary.NativeEndian.PutUint32(mark[:], Mark)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regVerdict},
		&expr.Bitwise{SourceRegister: regVerdict, DestRegister: regVerdict, Len: 4, Mask: mark[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regVerdict, Data: make([]byte, 4)},
	}
}

// setMark sets (on) or clears Mark, keeping the mark's other bits.
func setMark(on bool) []expr.Any {
	var mask, xor [4]byte
	binary.NativeEndian.PutUint32(mask[:], ^uint32(Mark))
	if on {
		binary.NativeEndian.PutUint32(xor[:], Mark)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regVerdict},
		&expr.Bitwise{SourceRegister: regVerdict, DestRegister: regVerdict, Len: 4, Mask: mask[:], Xor: xor[:]},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regVerdict},
	}
}
