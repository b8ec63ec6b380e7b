// Package quicgo connects quic-go servers to udpmux's QUIC-LB routing: a
// quic.ConnectionIDGenerator that makes QUIC-LB connection IDs (package
// quiclb), so that a udpmux in front of several quic-go backends, with
// the same QUIC-LB configuration, routes every packet of a connection to
// the backend that has it, by the connection ID alone: after the client
// migrates or its NAT rebinds, after udpmux restarts, and through another
// udpmux host.
//
// It is a Go module of its own (github.com/udpmux/udpmux/quicgo), so that
// udpmux itself does not depend on quic-go (v0.65.0 here).
//
// # Use
//
// Set the Generator as the Transport's ConnectionIDGenerator; every
// connection ID the transport issues then encodes the server's ID:
//
//	cfg, _ := quiclb.ParseConfig("rotation=0,server-id-len=2,nonce-len=6,key=<32 hex digits>,encode-length")
//	sid, _ := quiclb.ParseServerID("0a01")
//	gen, _ := quicgo.NewGenerator(cfg, sid)
//	tr := &quic.Transport{Conn: udpConn, ConnectionIDGenerator: gen}
//	ln, _ := tr.Listen(tlsConf, quicConf)
//
// quic-go takes the length of every connection ID the transport issues
// from the generator (ConnectionIDLen), so clients' short header packets
// carry DCIDs of the configuration's length, which udpmux reads. Each
// backend needs its own server ID, and all backends and udpmux the same
// configuration.
//
// # What the tests show
//
// A quic-go server with the Generator and a quic-go client over loopback
// (TestServerIssuesQUICLBCIDs, for QUIC v1 and v2): the SCIDs of the
// server's long headers, the connection IDs of its NEW_CONNECTION_ID
// frames (from the client's qlog events) and the DCID of every packet the
// client sends after the server's first all decode to the server's ID;
// a client that migrates twice to a new local socket (Conn.AddPath with a
// new Transport, Path.Probe, Path.Switch) keeps its connection and its
// stream, and uses a fresh connection ID on each path. TestProgramsDirect
// runs the programs below in network namespaces (as root with ip(8); on
// loopback otherwise): two servers with different server IDs and one
// configuration, clients that migrate four times each; no echo is lost or
// answered by the other server, and every migration succeeds.
// TestMakeCaptures (only with -capture) records such traffic for the
// dissector's tests in ../dissect/quic/testdata.
//
// # Programs
//
// cmd/quicecho is an echo server with the Generator and cmd/quicclient a
// client that checks the echoes of long-lived streams and migrates on
// command; both print JSON lines and are meant to be driven by tests of
// udpmux (see their documentation for flags, output and exit codes).
package quicgo
