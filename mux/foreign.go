//go:build linux

package mux

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/udpmux/udpmux/internal/udpsys"
)

// A socket of another process in a listener's SO_REUSEPORT group would get
// a share of the listener's clients: the kernel spreads datagrams over the
// group's members without regard to which process owns them. Only a
// successor that inherits the very sockets may share them, so New refuses
// to open a listener whose address another process already serves. It looks
// before binding, and again once the loops' sockets are bound, for one that
// started at the same moment.

// checkForeign returns an error if a UDP socket that is not among ours, and
// not connected to a peer (which receives nothing but its peer's
// datagrams), is bound where the listener ln would receive.
func checkForeign(ln *listener, addr netip.AddrPort, ours map[uint64]bool) error {
	if addr.Port() == 0 {
		return nil // a free port, which no one else has
	}
	socks, err := udpsys.BoundSockets()
	if err != nil {
		return nil // no /proc: nothing to check with
	}
	for _, s := range socks {
		if ours[s.Inode] || s.Remote.Port() != 0 || !overlap(s.Local, false, addr, ln.v6only) {
			continue
		}
		who := "another process"
		if pid, comm, ok := udpsys.SocketOwner(s.Inode); ok && pid == os.Getpid() {
			who = "another server of this process"
		} else if ok {
			who = fmt.Sprintf("another process (pid %d, %s)", pid, comm)
		}
		return &listenerError{ln.name, fmt.Errorf("%s is already served by %s, bound to %s: the kernel would split its datagrams between the two; stop that process, or start this one with the same control.socket so that it takes over",
			addr, who, s.Local)}
	}
	return nil
}
