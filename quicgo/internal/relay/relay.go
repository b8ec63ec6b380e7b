// Package relay is a recording UDP relay for tests: it forwards datagrams
// between clients and one server through an upstream socket per client
// address, as a 4-tuple proxy does, and records each datagram with its
// direction and the index of the client address (its path).
package relay

import (
	"net"
	"sync"
)

// Datagram is one recorded datagram.
type Datagram struct {
	Path     int  // index of the client address, in order of first appearance
	ToServer bool // client to server
	Payload  []byte
}

// Relay forwards between the clients of its socket and a server.
type Relay struct {
	conn   *net.UDPConn
	server *net.UDPAddr

	mu    sync.Mutex
	paths map[string]*upstream
	order int
	log   []Datagram
	wg    sync.WaitGroup
}

type upstream struct {
	index  int
	client *net.UDPAddr
	conn   *net.UDPConn
}

// New starts a relay on a new loopback socket to server.
func New(server *net.UDPAddr) (*Relay, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	r := &Relay{conn: c, server: server, paths: map[string]*upstream{}}
	r.wg.Add(1)
	go r.fromClients()
	return r, nil
}

// Addr returns the address clients send to.
func (r *Relay) Addr() *net.UDPAddr { return r.conn.LocalAddr().(*net.UDPAddr) }

// Datagrams returns what the relay recorded so far.
func (r *Relay) Datagrams() []Datagram {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Datagram(nil), r.log...)
}

// Close stops the relay and closes its sockets.
func (r *Relay) Close() {
	r.conn.Close()
	r.mu.Lock()
	for _, u := range r.paths {
		u.conn.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *Relay) record(path int, toServer bool, p []byte) {
	r.mu.Lock()
	r.log = append(r.log, Datagram{Path: path, ToServer: toServer, Payload: append([]byte(nil), p...)})
	r.mu.Unlock()
}

func (r *Relay) fromClients() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		u := r.paths[from.String()]
		if u == nil {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, r.server)
			if err != nil {
				r.mu.Unlock()
				continue
			}
			u = &upstream{index: r.order, client: from, conn: c}
			r.order++
			r.paths[from.String()] = u
			r.wg.Add(1)
			go r.fromServer(u)
		}
		r.mu.Unlock()
		r.record(u.index, true, buf[:n])
		u.conn.Write(buf[:n])
	}
}

func (r *Relay) fromServer(u *upstream) {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := u.conn.Read(buf)
		if err != nil {
			return
		}
		r.record(u.index, false, buf[:n])
		r.conn.WriteToUDP(buf[:n], u.client)
	}
}
