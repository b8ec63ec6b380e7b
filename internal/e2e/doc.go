//go:build linux

// Package e2e holds end-to-end tests that run the udpmux daemon against real
// programs (OpenVPN and WireGuard servers and clients) in network namespaces
// built with internal/netlab. The tests need root, iproute2 and, for the
// OpenVPN tests, /usr/sbin/openvpn; the roaming and spoofing tests also
// need ping (iputils-ping), nft (nftables) and conntrack (conntrack), and
// for WireGuard wireguard-go and wg (wireguard-go, wireguard-tools). They
// skip with a message naming what is missing otherwise (require_test.go),
// or fail with it under CI=true (internal/prereq).
//
// The roaming tests (roaming_*_e2e_test.go) move clients behind an
// emulated NAT to new source ports and addresses while their tunnels carry
// pings, directly to the backends (checking the harness) and through
// udpmux; the spoofing tests (spoof_e2e_test.go) spray forged tunnel
// packets at udpmux, and, while clients move (spoof_roaming_e2e_test.go),
// forge the backends' datagrams too, from a raw socket, at every ephemeral
// port of udpmux's upstream side.
//
// The fast path variants (TestWireGuardRoamingFastPath,
// TestOpenVPNRoamingFastPath, their upgrade variants,
// TestWireGuardSpoofFastPath, TestOpenVPNSpoofFastPath) run the WireGuard
// and OpenVPN roaming and spoofing tests with fast_path: nftables and IPv4
// forwarding on in udpmux's namespace: the tunnels' data datagrams
// (WireGuard transport messages, OpenVPN P_DATA_V2) go through the kernel,
// and every session must be in it at the end, the kernel having forwarded
// datagrams both ways (checkOffloaded).
//
// The OpenVPN fast path tests (fastpath_openvpn_e2e_test.go) go further:
// TestOpenVPNFastPathRenegotiation has the clients renegotiate every 10 s
// (--reneg-sec), which puts their data on the next key ID, and move, once
// both ends use the new key and right after a renegotiation; the kernel
// must forward every session on its new key's map (fwd_openvpnN, N not 0:
// read from the table), and each move carry traffic again within 2 s.
// TestOpenVPNRenegotiationThroughUdpmux is the same without the fast
// path. The clients' packets by key ID are counted by an nft table in
// their namespaces. TestOpenVPNFastPathAfterCrash kills udpmux (SIGKILL)
// with every session in the kernel, which forwards on (at most one echo
// request lost), starts a fresh one that adopts the table, and moves the
// clients, whose sessions the fresh udpmux recovers from the backends.
//
// The transparent source tests (transparent_e2e_test.go) run the OpenVPN
// and WireGuard roaming tests with `source: client`: the backends route
// the clients' network through udpmux's namespace, which delivers their
// replies to udpmux's sockets bound to the clients' addresses as
// docs/operations.md sets it up (configs/transparent.nft, an ip rule and a
// local route), and check that the backends see each client's own address,
// and after its moves its last mapping, with an upgrade in the middle that
// loses no echo request. They need what the roaming tests need.
//
// The recovery tests (recovery_e2e_test.go) kill udpmux with SIGKILL while
// WireGuard and OpenVPN tunnels carry pings through it, and have a udpmux
// that never saw the tunnels take over: a fresh one in the same namespace,
// or a standby in another namespace that takes over the service address
// (gratuitous ARP); one variant sprays forged tunnel IDs at it meanwhile.
// Each tunnel must answer again within 2 s, on its backend, without a new
// handshake or renegotiation. They need what the roaming tests need.
//
// The QUIC test (quic_e2e_test.go) runs quic-go servers and clients
// (quicgo's quicecho and quicclient, built from the quicgo module) through
// udpmux with dissector quic: clients migrate while udpmux is upgraded and
// while a second udpmux takes their new flows. It needs root, iproute2 and
// nft, and the quic-go module in the module cache or from GOPROXY.
//
// The fleet tests (fleet_e2e_test.go, lab in fleet_test.go) run udpmux on
// three hosts behind an FRR router (zebra, bgpd, bfdd) that spreads the
// clients' flows over them by ECMP, each host with the service address on
// its loopback and configs/fleet/udpmux.yaml, announcing it over BGP to
// the router, which runs configs/fleet/frr.conf; two backend namespaces on
// a segment of their own each run wireguard-go, an OpenVPN server and a
// quicecho. Four WireGuard, four OpenVPN and two quic-go clients (two
// connections each) send throughout while, one at a time, a host is
// killed (SIGKILL), brought back, drained (`udpmux drain`) and upgraded
// (SIGUSR2). Each event is measured and logged per flow (how soon it
// answered again, its longest gap, requests lost), with the router's
// route change (the detection time), WireGuard handshakes, OpenVPN
// renegotiations and tunnel addresses, QUIC connections lost and backend
// changes; the criteria are in TestFleet's scenarios. TestFleetMaglevAgrees
// has three udpmux processes place the same 256 flows on the same of
// eight backends. They need what the roaming tests need (but nft and
// conntrack) and FRR (frr).
//
// The health check tests (health_e2e_test.go) run two backends of one kind
// behind udpmux with active health checks (listeners[].health) -- udpmux's
// own echo handler, OpenVPN with tls-crypt, wireguard-go with udpmux's
// health peer, quic-go's quicecho -- and make one fail firewalled (nft
// drop), hung (SIGSTOP) and stopped, then bring it back: udpmux must take
// it out within fall probe intervals and back within rise, put every new
// session on the other, and the other's live session must lose nothing.
// They need root, ip, nft and ping, and each kind's programs as above.
//
// Run them with: go test -race -v ./internal/e2e
package e2e
