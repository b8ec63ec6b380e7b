//go:build linux

package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/mux"
)

// Miniature WireGuard: the messages of WireGuard's wire format (so that
// package wireguard's Dissector and Track read them as they read the real
// ones), with a MAC under a per-tunnel secret standing for the real
// cryptography. A client starts a handshake with an initiation that names
// its sender index C and its tunnel; a backend answers with a response
// (sender index B, its own, receiver index C) and then follows the client
// to the address of every transport message it authenticates: one to B with
// a fresh counter and a MAC under the tunnel's secret. The backend's own
// transport messages carry C. Every backend knows every tunnel's secret, as
// WireGuard backends share their peers. An attacker knows no secret, and
// sees no index or counter.

const (
	wgTransportSize = 96 // 32 bytes and 4 blocks
	wgMACSize       = 8
)

func wgMAC(secret []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, secret)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)[:wgMACSize]
}

// wgInitiation returns a client's initiation with sender index c for
// tunnel n.
func wgInitiation(c [4]byte, n uint32, secret []byte) []byte {
	p := make([]byte, 148)
	p[0] = 1
	copy(p[4:], c[:])
	binary.BigEndian.PutUint32(p[8:], n)
	copy(p[12:], wgMAC(secret, p[4:12]))
	return p
}

// wgResponse returns a backend's response with sender index b and receiver
// index c.
func wgResponse(b, c [4]byte, secret []byte) []byte {
	p := make([]byte, 92)
	p[0] = 2
	copy(p[4:], b[:])
	copy(p[8:], c[:])
	copy(p[12:], wgMAC(secret, p[4:12]))
	return p
}

// wgTransport returns a transport message to receiver index r with counter
// n and msg (at most 70 bytes), MACed with secret.
func wgTransport(r [4]byte, n uint64, msg string, secret []byte) []byte {
	p := make([]byte, wgTransportSize)
	p[0] = 4
	copy(p[4:], r[:])
	binary.LittleEndian.PutUint64(p[8:], n)
	binary.BigEndian.PutUint16(p[24:], uint16(len(msg)))
	copy(p[26:], msg)
	copy(p[16:], wgMAC(secret, p[4:16], p[24:]))
	return p
}

// wgOpen returns the receiver index, counter and message of transport
// message p if it is authentic under secret.
func wgOpen(p []byte, secret []byte) (r [4]byte, n uint64, msg string, ok bool) {
	if len(p) != wgTransportSize || p[0] != 4 || !hmac.Equal(p[16:24], wgMAC(secret, p[4:16], p[24:])) {
		return r, 0, "", false
	}
	l := int(binary.BigEndian.Uint16(p[24:]))
	if 26+l > len(p) {
		return r, 0, "", false
	}
	return [4]byte(p[4:8]), binary.LittleEndian.Uint64(p[8:]), string(p[26 : 26+l]), true
}

func randIndex() [4]byte {
	var b [4]byte
	rand.Read(b[:])
	return b
}

// wgPeer is a backend's state of one handshake.
type wgPeer struct {
	tunnel   uint32
	client   [4]byte // C, the client's index
	at       netip.AddrPort
	received uint64 // the client's last counter
	sent     uint64 // the backend's counter
}

// wgBackend is a backend of miniature WireGuard, answering each transport
// message with "name:" and its message.
type wgBackend struct {
	name    string
	conn    *net.UDPConn
	secrets map[uint32][]byte

	mu     sync.Mutex
	peers  map[[4]byte]*wgPeer // by the backend's index B
	forged int                 // messages that failed to authenticate
	// froms are the addresses each tunnel's authentic messages came from.
	froms map[uint32]map[netip.AddrPort]bool
}

func startWGBackend(t *testing.T, name string, secrets map[uint32][]byte) *wgBackend {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &wgBackend{name: name, conn: c, secrets: secrets, peers: map[[4]byte]*wgPeer{}, froms: map[uint32]map[netip.AddrPort]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if reply := b.handle(buf[:n], from); reply != nil {
				c.WriteToUDPAddrPort(reply, from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return b
}

func (b *wgBackend) addr() netip.AddrPort { return b.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// handle authenticates p from from and returns the answer, or nil.
func (b *wgBackend) handle(p []byte, from netip.AddrPort) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case len(p) == 148 && p[0] == 1:
		n := binary.BigEndian.Uint32(p[8:])
		secret, ok := b.secrets[n]
		if !ok || !hmac.Equal(p[12:20], wgMAC(secret, p[4:12])) {
			b.forged++
			return nil
		}
		idx := randIndex()
		b.peers[idx] = &wgPeer{tunnel: n, client: [4]byte(p[4:8]), at: from}
		b.authentic(n, from)
		return wgResponse(idx, [4]byte(p[4:8]), secret)
	case len(p) == wgTransportSize && p[0] == 4:
		pe := b.peers[[4]byte(p[4:8])]
		if pe == nil {
			b.forged++
			return nil
		}
		secret := b.secrets[pe.tunnel]
		_, n, msg, ok := wgOpen(p, secret)
		if !ok || n <= pe.received {
			b.forged++
			return nil
		}
		pe.received, pe.at = n, from // the backend follows its client
		pe.sent++
		b.authentic(pe.tunnel, from)
		return wgTransport(pe.client, pe.sent, b.name+":"+msg, secret)
	}
	b.forged++
	return nil
}

func (b *wgBackend) authentic(tunnel uint32, from netip.AddrPort) {
	if b.froms[tunnel] == nil {
		b.froms[tunnel] = map[netip.AddrPort]bool{}
	}
	b.froms[tunnel][from] = true
}

// at returns where the backend sends tunnel n's messages, if it has the
// tunnel.
func (b *wgBackend) at(n uint32) (netip.AddrPort, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, pe := range b.peers {
		if pe.tunnel == n {
			return pe.at, true
		}
	}
	return netip.AddrPort{}, false
}

// forgedCount returns how many messages failed to authenticate.
func (b *wgBackend) forgedCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.forged
}

// wgClient is one tunnel's client; it may move to a new socket.
type wgClient struct {
	t       *testing.T
	tunnel  uint32
	secret  []byte
	to      netip.AddrPort
	conn    *net.UDPConn
	index   [4]byte // C
	backend [4]byte // B
	counter uint64
	// pinged are the messages ping sent again and again: their later
	// answers are no surprise.
	pinged map[string]bool
	// reuse binds its sockets with SO_REUSEADDR, for a proxy that sends
	// from the client's address (Config.ClientSource).
	reuse bool
}

// move has the client send from a new socket bound to local.
func (c *wgClient) move(local string) {
	c.t.Helper()
	if c.conn != nil {
		c.conn.Close()
	}
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local))}
	if c.reuse {
		d.Control = reuseAddr
	}
	conn, err := d.Dial("udp4", c.to.String())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	c.conn = conn.(*net.UDPConn)
}

// addr returns the client's address.
func (c *wgClient) addr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// handshake runs a handshake and reports whether it completed.
func (c *wgClient) handshake() bool {
	c.index = randIndex()
	c.conn.Write(wgInitiation(c.index, c.tunnel, c.secret))
	p := c.read()
	if len(p) != 92 || p[0] != 2 || [4]byte(p[8:12]) != c.index || !hmac.Equal(p[12:20], wgMAC(c.secret, p[4:12])) {
		return false
	}
	c.backend, c.counter = [4]byte(p[4:8]), 0
	return true
}

// send sends msg in a transport message and returns the answering backend's
// name, or "" when no authentic answer came.
func (c *wgClient) send(msg string) string {
	c.counter++
	c.conn.Write(wgTransport(c.backend, c.counter, msg, c.secret))
	for {
		p := c.read()
		if p == nil {
			return ""
		}
		r, _, got, ok := wgOpen(p, c.secret)
		if !ok || r != c.index {
			continue // not for this tunnel: a client drops it
		}
		name, echo, _ := strings.Cut(got, ":")
		if c.pinged[echo] {
			continue
		}
		if echo != msg {
			c.t.Fatalf("tunnel %d: answer %q to %q", c.tunnel, got, msg)
		}
		return name
	}
}

// ping sends msg again every interval, with a fresh counter each time, as
// a tunnel's pings do, until an answer to one arrives, and returns the
// answering backend's name, or "" after two seconds.
func (c *wgClient) ping(msg string, interval time.Duration) string {
	if c.pinged == nil {
		c.pinged = map[string]bool{}
	}
	c.pinged[msg] = true
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		c.counter++
		c.conn.Write(wgTransport(c.backend, c.counter, msg, c.secret))
		c.conn.SetReadDeadline(time.Now().Add(interval))
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				break
			}
			if r, _, got, ok := wgOpen(buf[:n], c.secret); ok && r == c.index {
				name, echo, _ := strings.Cut(got, ":")
				if echo != msg {
					c.t.Fatalf("tunnel %d: answer %q to %q", c.tunnel, got, msg)
				}
				return name
			}
		}
	}
	return ""
}

// read returns the next datagram, or nil after two seconds.
func (c *wgClient) read() []byte {
	buf := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.conn.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// startWGProxy starts a proxy for miniature WireGuard in front of backends,
// with package wireguard's Dissector and Track.
func startWGProxy(t *testing.T, cfg Config, backends ...*wgBackend) (*mux.Server, *Handler) {
	t.Helper()
	srv, h, _ := startWGProxyAt(t, cfg, netip.MustParseAddrPort("127.0.0.1:0"), backends...)
	return srv, h
}

// startWGProxyAt is startWGProxy on addr, and returns a function that stops
// the proxy, closing its sockets, and returns once it has.
func startWGProxyAt(t *testing.T, cfg Config, addr netip.AddrPort, backends ...*wgBackend) (*mux.Server, *Handler, func()) {
	t.Helper()
	for _, b := range backends {
		cfg.Backends = append(cfg.Backends, b.addr())
	}
	d, err := wireguard.New(wireguard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tracker, cfg.Logger = d, quiet()
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mux.New(mux.Config{
		Workers: 2, Logger: quiet(),
		Listeners: []mux.ListenerConfig{{
			Name: "wg", Address: addr, Handler: h, Dissector: d, IdleTimeout: time.Minute,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return srv, h, stop
}

// wgSecrets returns the secrets of n tunnels, numbered from 100.
func wgSecrets(n int) map[uint32][]byte {
	secrets := map[uint32][]byte{}
	for i := range n {
		secrets[uint32(100+i)] = []byte{byte(i), 's', 'e', 'c', 'r', 'e', 't'}
	}
	return secrets
}

// dialWG starts the tunnels of secrets through srv, tunnel 100+i from
// address 127.0.1.(i+1), each with a handshake and a first message, and
// returns them with the name of the backend each landed on.
func dialWG(t *testing.T, srv *mux.Server, secrets map[uint32][]byte) ([]*wgClient, map[uint32]string) {
	t.Helper()
	var clients []*wgClient
	landed := map[uint32]string{}
	for i := range len(secrets) {
		c := &wgClient{t: t, tunnel: uint32(100 + i), secret: secrets[uint32(100+i)], to: srv.Addr(0)}
		c.move(fmt.Sprintf("127.0.1.%d:0", i+1))
		if !c.handshake() {
			t.Fatalf("tunnel %d: no response to its initiation", c.tunnel)
		}
		if landed[c.tunnel] = c.send("hello"); landed[c.tunnel] == "" {
			t.Fatalf("tunnel %d: no answer to its first message", c.tunnel)
		}
		clients = append(clients, c)
	}
	return clients, landed
}
