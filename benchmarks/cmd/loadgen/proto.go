package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// Generator protocols (-proto): the wire header at offset 0, or inside a
// tunnel protocol's data messages.
const (
	protoWireGuard = "wireguard"
	protoOpenVPN   = "openvpn"
)

// payloadOffset is where the wire header sits in the generator's datagrams.
func (g *generator) payloadOffset() int {
	switch g.cfg.proto {
	case protoWireGuard:
		return wgHeaderLen
	case protoOpenVPN:
		return ovpnDataHeaderLen
	}
	return 0
}

// putProto writes the protocol header of flow id's datagram number seq
// (from 0) into b, before the wire header.
func (g *generator) putProto(b []byte, id uint32, seq uint64) {
	switch g.cfg.proto {
	case protoWireGuard:
		putTransport(b, id, seq)
	case protoOpenVPN:
		putDataV2(b, id, uint32(seq+1)) // packet-ids count from 1
	}
}

// sendsHello reports whether each flow sends its hello before its data:
// with a tunnel protocol, unless -hello=false leaves the sessions to an
// earlier run's hellos.
func (g *generator) sendsHello() bool { return g.cfg.proto != "" && g.cfg.hello }

// hello returns the message that flow id sends before its data: the
// one that makes its session at a proxy that knows the protocol.
func (g *generator) hello(id uint32) []byte {
	switch g.cfg.proto {
	case protoWireGuard:
		return initiation(id)
	case protoOpenVPN:
		return hardReset(ovpnSessionID(id))
	}
	return nil
}

// isHello reports whether b is the echo of a hello.
func (g *generator) isHello(b []byte) bool {
	switch g.cfg.proto {
	case protoWireGuard:
		return len(b) == wgInitiationLen && b[0] == wgInitiation
	case protoOpenVPN:
		return len(b) == ovpnHardResetLen && b[0] == ovpnHardResetClientV2<<ovpnOpcodeShift
	}
	return false
}

// handshake sends one hello per flow and collects their echoes for up to a
// second, or until every flow's has come back.
func (g *generator) handshake() {
	for i, fd := range g.fds {
		p := g.hello(uint32(g.cfg.flowBase + i))
		for range 3 { // a full send buffer is retried, a lost hello is not
			if _, err := unix.Write(fd, p); err == nil {
				break
			}
			g.poll(int64(time.Millisecond))
		}
	}
	deadline := g.now() + int64(time.Second)
	for now := g.now(); now < deadline && g.r.Handshakes < uint64(len(g.fds)); now = g.now() {
		g.poll(deadline - now)
	}
}
