package udpsys

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// BoundSocket is one UDP socket of a network namespace as /proc/net/udp and
// /proc/net/udp6 list it.
type BoundSocket struct {
	// Local is the bound address; Remote the connected peer, or an
	// unspecified address with port 0 for an unconnected socket.
	Local, Remote netip.AddrPort
	// Inode identifies the socket, as fstat and /proc/PID/fd name it.
	Inode uint64
	// Drops counts the datagrams the kernel dropped for the socket.
	Drops uint64
}

// BoundSockets lists the UDP sockets of the calling process's network
// namespace.
func BoundSockets() ([]BoundSocket, error) {
	var all []BoundSocket
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		text, err := os.ReadFile(name)
		if err != nil {
			if os.IsNotExist(err) && strings.HasSuffix(name, "6") {
				continue // no IPv6 in this kernel
			}
			return nil, err
		}
		socks, err := ParseProcNetUDP(string(text))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		all = append(all, socks...)
	}
	return all, nil
}

// ParseProcNetUDP parses the text of /proc/net/udp or udp6: after a header
// line, the second and third columns are the local and remote addresses as
// HEXADDR:HEXPORT, the address being the raw network-order bytes printed as
// native-endian 32-bit words; the tenth is the inode and the last the drops.
func ParseProcNetUDP(text string) ([]BoundSocket, error) {
	var out []BoundSocket
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		var s BoundSocket
		var err error
		if s.Local, err = parseProcAddr(f[1]); err != nil {
			return out, err
		}
		if s.Remote, err = parseProcAddr(f[2]); err != nil {
			return out, err
		}
		if s.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
			return out, fmt.Errorf("bad inode in %q", sc.Text())
		}
		if len(f) >= 13 {
			s.Drops, _ = strconv.ParseUint(f[len(f)-1], 10, 64)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseProcAddr(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok || (len(hexAddr) != 8 && len(hexAddr) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad /proc/net/udp address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad /proc/net/udp port in %q: %v", s, err)
	}
	raw := make([]byte, 0, 16)
	for i := 0; i < len(hexAddr); i += 8 {
		w, err := strconv.ParseUint(hexAddr[i:i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("bad /proc/net/udp address %q: %v", s, err)
		}
		raw = binary.NativeEndian.AppendUint32(raw, uint32(w))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// Inode returns the inode of the socket fd, which BoundSocket.Inode names.
func Inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// SocketOwner finds a process holding the socket with inode ino, by the
// links in /proc/PID/fd, and returns its id and command name. It finds only
// what this process may read: every process for root, its user's otherwise.
func SocketOwner(ino uint64) (pid int, comm string, ok bool) {
	want := "socket:[" + strconv.FormatUint(ino, 10) + "]"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		id, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			if link, _ := os.Readlink(filepath.Join(dir, fd.Name())); link == want {
				name, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				return id, strings.TrimSpace(string(name)), true
			}
		}
	}
	return 0, "", false
}
