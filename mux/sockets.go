//go:build linux

package mux

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// listenerError is an error of one listener's: New's message names the
// listener, and Listen, whose one listener is the address it reports
// already, takes the error within.
type listenerError struct {
	name string
	err  error
}

func (e *listenerError) Error() string { return "listener " + e.name + ": " + e.err.Error() }
func (e *listenerError) Unwrap() error { return e.err }

// openSocket returns loop l's socket for ln, bound to addr: a duplicate of
// the i-th of the listener's Sockets, given what a listening socket needs,
// or a new socket in the SO_REUSEPORT group of those before.
func (srv *Server) openSocket(ln *listener, l *loop, i int, addr netip.AddrPort) (*udpsys.Socket, error) {
	cfg := udpsys.ListenConfig{
		IncomingCPU: l.cpu, RecvBuffer: srv.cfg.RecvBuffer, SendBuffer: srv.cfg.SendBuffer,
		V6Only: ln.v6only, Control: ln.control,
	}
	if i < len(ln.sockets) {
		fd, err := udpsys.DupFile(ln.sockets[i])
		if err != nil {
			return nil, err
		}
		sock, err := udpsys.AdoptUDP(fd, cfg)
		if err != nil {
			udpsys.Close(fd)
			return nil, err
		}
		return sock, nil
	}
	sock, err := udpsys.ListenUDP(addr, cfg)
	if len(ln.sockets) > 0 && errors.Is(err, udpsys.ErrAddrInUse) {
		// The group had SO_REUSEPORT (New checked); what the kernel
		// refuses is another user's joining it.
		return nil, fmt.Errorf("loop %d cannot join the SO_REUSEPORT group of the sockets it was given: were they created by another user (systemd as root)? Run as that user, give one socket per worker, or set workers to %d: %w",
			l.id, len(ln.sockets), err)
	}
	return sock, err
}
