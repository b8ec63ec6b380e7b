//go:build linux

// Package handoff is the wire protocol between a running udpmux and its
// successor, and between udpmux and its control commands: messages over a
// SOCK_SEQPACKET Unix socket, each one frame of type, payload and CRC-32C,
// with file descriptors riding on the message they belong to (SCM_RIGHTS).
// A sequenced-packet socket keeps message boundaries, so descriptors can
// never be attached to the wrong bytes.
package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the handoff protocol version; a peer speaking another is refused.
// Version 2 added retained sessions and relay sockets, 3 the Ready step, 4
// session records' Change (sessions copied before the owner pauses), 5
// session IDs and the keys a session is found by, which a relay names
// sessions by too, 6 the application's metadata and descriptors in place
// of udpmux's config file and control socket.
const Version = 6

// MaxFiles bounds the application's descriptors in a handoff.
const MaxFiles = 64

// MaxMessage bounds one message; session records are batched up to it.
const MaxMessage = 64 << 10

// MaxFDsPerMessage stays within the kernel's SCM_MAX_FD (253).
const MaxFDsPerMessage = 250

// Type says what a message carries.
type Type uint8

// Message types.
const (
	TypeHello       Type = iota + 1 // successor → owner: Hello
	TypeAccept                      // owner → successor: the owner has stopped reading; the last changes follow
	TypeReject                      // owner → successor: reason text
	TypeListeners                   // owner → successor, before freezing: Listener records
	TypeFDs                         // owner → successor: descriptors, in order, each before the records naming it
	TypeSessions                    // owner → successor: Session records
	TypeEnd                         // owner → successor: End
	TypeConfirm                     // successor → owner: took over; exit
	TypeAbort                       // successor → owner: failed; resume serving
	TypeStatus                      // client → owner: request process status
	TypeSessionList                 // client → owner: request the session list
	TypeText                        // owner → client: a chunk of a text reply
	TypeTextEnd                     // owner → client: end of a text reply
	TypeDone                        // owner → successor: confirmed; the owner stops for good
	TypeReady                       // successor → owner: built from the listeners, or restored the early copy; go on
	TypeCopied                      // owner → successor: the early copy of the sessions is complete; answer Ready once restored
	TypeDrain                       // client → owner: withdraw the announcements, serve on until quiet, then exit
)

// Message types of backend commands, after the others so that theirs keep
// their numbers (a block of their own, so that adding to it realigns none).
const (
	TypeBackend      Type = TypeDrain + 1 + iota // client → owner: drain, enable or weigh a backend (the application's request); a text reply or TypeFailed follows
	TypeBackendState                             // successor → owner, before its Hello: the run-time backend state, as text; the owner keeps it unchanged until the handoff that follows ends
	TypeFailed                                   // owner → client: the request failed, for the reason this text gives; ends the reply
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Conn frames messages over a SOCK_SEQPACKET Unix connection.
type Conn struct {
	uc  *net.UnixConn
	buf []byte
	oob []byte
	// idle bounds each Send and Recv, deadline all of them (zero: none);
	// see SetIdleTimeout and SetDeadline.
	idle     time.Duration
	deadline time.Time
}

// socketBuffer lets the sender run ahead of the receiver by a few dozen
// messages, so that a handoff's two ends work in parallel.
const socketBuffer = 4 << 20

// NewConn wraps a connected "unixpacket" socket.
func NewConn(uc *net.UnixConn) *Conn {
	uc.SetWriteBuffer(socketBuffer)
	uc.SetReadBuffer(socketBuffer)
	return &Conn{
		uc:  uc,
		buf: make([]byte, MaxMessage+16),
		oob: make([]byte, unix.CmsgSpace(MaxFDsPerMessage*4)),
	}
}

// Dial connects to a control socket.
func Dial(path string, timeout time.Duration) (*Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("unixpacket", path)
	if err != nil {
		return nil, err
	}
	return NewConn(c.(*net.UnixConn)), nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.uc.Close() }

// UnixConn returns the underlying connection.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// SetDeadline bounds the following reads and writes, together: none may
// end after t. The zero time removes the bound.
func (c *Conn) SetDeadline(t time.Time) error {
	c.deadline = t
	return c.arm()
}

// SetIdleTimeout bounds each following read and write on its own, so that a
// long exchange that keeps making progress is not cut short, while a peer
// that stops answering is given up on after d. Zero removes the bound. A
// deadline set with SetDeadline still holds.
func (c *Conn) SetIdleTimeout(d time.Duration) error {
	c.idle = d
	return c.arm()
}

// arm sets the socket's deadline for the next read or write.
func (c *Conn) arm() error {
	t := c.deadline
	if c.idle > 0 {
		if next := time.Now().Add(c.idle); t.IsZero() || next.Before(t) {
			t = next
		}
	}
	return c.uc.SetDeadline(t)
}

// Send writes one message with optional descriptors.
func (c *Conn) Send(t Type, payload []byte, fds []int) error {
	if len(payload) > MaxMessage {
		return fmt.Errorf("handoff: message of %d bytes exceeds %d", len(payload), MaxMessage)
	}
	if len(fds) > MaxFDsPerMessage {
		return fmt.Errorf("handoff: %d descriptors in one message exceed %d", len(fds), MaxFDsPerMessage)
	}
	msg := c.buf[:0]
	msg = append(msg, byte(t))
	msg = append(msg, payload...)
	msg = binary.LittleEndian.AppendUint32(msg, crc32.Checksum(msg, crcTable))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if c.idle > 0 {
		c.arm()
	}
	n, oobn, err := c.uc.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return fmt.Errorf("handoff: send: %w", err)
	}
	if n != len(msg) || oobn != len(oob) {
		return fmt.Errorf("handoff: short send: %d of %d bytes", n, len(msg))
	}
	return nil
}

// Errors from Recv.
var (
	ErrCorrupt   = errors.New("handoff: corrupt message")
	ErrTruncated = errors.New("handoff: truncated message")
)

// Recv reads one message. The payload is valid until the next Recv. The
// caller owns the returned descriptors, also when an error is returned with
// them.
func (c *Conn) Recv() (Type, []byte, []int, error) {
	if c.idle > 0 {
		c.arm()
	}
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.buf, c.oob)
	if err != nil {
		return 0, nil, nil, err
	}
	var fds []int
	if oobn > 0 {
		fds, err = parseRights(c.oob[:oobn])
		if err != nil {
			return 0, nil, fds, err
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return 0, nil, fds, ErrTruncated
	}
	if n == 0 {
		return 0, nil, fds, errEOF
	}
	t, payload, err := Unframe(c.buf[:n])
	return t, payload, fds, err
}

var errEOF = fmt.Errorf("handoff: peer closed the connection: %w", net.ErrClosed)

// PeekType returns the type of the next message without reading it, for a
// server that hands the connection on by what it asks for.
func (c *Conn) PeekType() (Type, error) {
	if c.idle > 0 {
		c.arm()
	}
	raw, err := c.uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var b [1]byte
	var n int
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK)
		return rerr != unix.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, errEOF
	}
	return Type(b[0]), nil
}

// Unframe checks a frame's checksum and splits it into type and payload.
func Unframe(msg []byte) (Type, []byte, error) {
	if len(msg) < 5 {
		return 0, nil, ErrTruncated
	}
	body, sum := msg[:len(msg)-4], binary.LittleEndian.Uint32(msg[len(msg)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return 0, nil, ErrCorrupt
	}
	return Type(body[0]), body[1:], nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handoff: control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// PeerCredentials returns the connected peer's process credentials.
func PeerCredentials(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, serr
}
