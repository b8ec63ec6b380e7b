//go:build linux

package mux

import (
	"os"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// activated holds the sockets systemd passed, until ActivationSockets hands
// them out: the environment that names them is read once and unset.
var activated struct {
	once  sync.Once
	mu    sync.Mutex
	files []*os.File
}

// ActivationSockets returns the sockets systemd passed to the process by
// socket activation (LISTEN_PID, LISTEN_FDS) that are UDP sockets bound to
// address, for ListenConfig.Sockets or ListenerConfig.Sockets. address is
// "host:port" with a literal host, as in the unit's ListenDatagram=; an
// empty host stands for the wildcard of either family. It returns none when
// systemd passed none for address, or the process was not activated, so
// that the Listener opens its own sockets:
//
//	lc := mux.ListenConfig{}
//	if lc.Sockets, err = mux.ActivationSockets(":9000"); err != nil { ... }
//	ln, err := lc.Listen(ctx, "udp", ":9000")
//
// The first call takes the sockets from the environment, which it unsets.
// Each socket is returned once, and the caller owns it: close it once
// Listen has returned. Sockets no call asks for stay open.
func ActivationSockets(address string) ([]*os.File, error) {
	p, err := parseBoundPattern(address)
	if err != nil {
		return nil, err
	}
	activated.once.Do(func() { activated.files = activation.Files(true) })
	activated.mu.Lock()
	defer activated.mu.Unlock()
	var socks []*os.File
	for i, f := range activated.files {
		if f == nil {
			continue
		}
		if b, err := udpsys.InspectFile(f); err != nil || !p.matches(b.Local) {
			continue // another kind of socket, or another address
		}
		socks = append(socks, f)
		activated.files[i] = nil
	}
	return socks, nil
}
