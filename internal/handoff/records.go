//go:build linux

package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/udpmux/udpmux/flowtable"
)

// Hello opens a handoff: the successor's protocol version, process and
// the application's metadata (udpmux's: its config file), which the owner
// checks before anything is sent.
type Hello struct {
	Version uint16
	PID     int32
	Meta    []byte
}

// AppendHello encodes h.
func AppendHello(b []byte, h Hello) []byte {
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	b = binary.LittleEndian.AppendUint32(b, uint32(h.PID))
	return append(b, h.Meta...)
}

// DecodeHello decodes a Hello; any version decodes, the caller compares it.
func DecodeHello(p []byte) (Hello, error) {
	if len(p) < 6 {
		return Hello{}, fmt.Errorf("hello: %w", ErrTruncated)
	}
	return Hello{
		Version: binary.LittleEndian.Uint16(p),
		PID:     int32(binary.LittleEndian.Uint32(p[2:])),
		Meta:    append([]byte(nil), p[6:]...),
	}, nil
}

// Listener describes one listener's sockets, one per event loop, whose
// descriptors are attached to the Listeners message in order.
type Listener struct {
	Name    string
	Address netip.AddrPort
	Sockets int
}

// Listeners is the first state message: every listener, how many of the
// application's descriptors follow the listeners' ones, and how many relay
// sockets follow those: one per event loop when the owner keeps sessions it
// cannot hand over (Session.Retained), none otherwise.
type Listeners struct {
	Listeners []Listener
	Files     int
	Relays    int
}

// AppendListeners encodes ls.
func AppendListeners(b []byte, ls Listeners) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(ls.Listeners)))
	for _, l := range ls.Listeners {
		b = appendString(b, l.Name)
		b = appendAddrPort(b, l.Address)
		b = binary.LittleEndian.AppendUint16(b, uint16(l.Sockets))
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(ls.Files))
	return binary.LittleEndian.AppendUint16(b, uint16(ls.Relays))
}

// DecodeListeners decodes and checks a Listeners message.
func DecodeListeners(p []byte) (Listeners, error) {
	d := decoder{b: p}
	var ls Listeners
	n := int(d.u16())
	for i := 0; i < n && d.err == nil; i++ {
		l := Listener{Name: d.str(), Address: d.addrPort(), Sockets: int(d.u16())}
		if d.err == nil && (l.Sockets == 0 || !l.Address.IsValid()) {
			d.fail(fmt.Errorf("listener %d: %d sockets at %v", i, l.Sockets, l.Address))
		}
		ls.Listeners = append(ls.Listeners, l)
	}
	ls.Files = int(d.u16())
	if d.err == nil && ls.Files > MaxFiles {
		d.fail(fmt.Errorf("%d application descriptors, at most %d: %w", ls.Files, MaxFiles, ErrCorrupt))
	}
	ls.Relays = int(d.u16())
	if d.err == nil && ls.Relays != 0 {
		// A relay socket pairs one loop of each process: as many as each
		// listener has sockets.
		if len(ls.Listeners) == 0 {
			d.fail(fmt.Errorf("%d relay sockets without listeners: %w", ls.Relays, ErrCorrupt))
		}
		for _, l := range ls.Listeners {
			if l.Sockets != ls.Relays && d.err == nil {
				d.fail(fmt.Errorf("%d relay sockets for %d loops: %w", ls.Relays, l.Sockets, ErrCorrupt))
			}
		}
	}
	return ls, d.finish("listeners")
}

// Session is one session's state: everything the successor needs to go on
// serving it without its peer or backend noticing.
type Session struct {
	// ID tells the session from every other; later records about it (and
	// the relay) name it by its ID.
	ID uint64
	// Key is the key the session was created under.
	Key flowtable.Key
	// Keys are the keys the session is found by, the one that holds its
	// idle deadline first; at most MaxKeys. Empty means Key alone.
	Keys        []flowtable.Key
	Loop        uint16
	Peer, Local netip.AddrPort
	// Created is when the session began, in Unix nanoseconds.
	Created int64
	// IdleLeft is how long the session has before it expires, and
	// IdleTimeout its full idle timeout, both in nanoseconds.
	IdleLeft, IdleTimeout                  int64
	RxPackets, RxBytes, TxPackets, TxBytes uint64
	// Upstream is the index, among the descriptors of the TypeFDs messages,
	// of the session's own socket; -1 for none.
	Upstream int32
	// Retained marks a session whose handler cannot hand its state over:
	// the owner keeps serving it, and the successor relays its datagrams
	// to the owner. A retained record has no State and no Upstream.
	Retained bool
	// Change says what the record does to the successor's copy of the
	// session: the owner copies sessions early, while it still serves, and
	// then, paused, sends only what changed since.
	Change Change
	// State is the handler's serialized state.
	State []byte
}

// Change is what a Session record does in the successor. A session is
// known by its Key and Created together: a key may be reused by a new
// session once the old one ended.
type Change uint8

// The kinds of Change.
const (
	// ChangeNew: a session the successor does not have yet.
	ChangeNew Change = iota
	// ChangeUpdate: a session copied earlier saw datagrams, learned keys
	// or moved; its peer, keys, counters and idle time replace the copy's.
	// No State or Upstream.
	ChangeUpdate
	// ChangeGone: a session copied earlier ended; the successor drops its
	// copy. No State or Upstream.
	ChangeGone
)

// Session flags, one byte in the encoding; other bits are refused. The
// change takes two bits, and 3 is not a change.
const (
	flagRetained = 1 << iota
	flagUpdate
	flagGone
	knownFlags = flagRetained | flagUpdate | flagGone
)

// MaxState bounds a handler's serialized state per session.
const MaxState = 4096

// MaxKeys bounds the keys of a session record.
const MaxKeys = 64

// AppendSession encodes s.
func AppendSession(b []byte, s *Session) ([]byte, error) {
	if len(s.State) > MaxState {
		return b, fmt.Errorf("session %v: handler state of %d bytes exceeds %d", s.Key, len(s.State), MaxState)
	}
	if len(s.Keys) > MaxKeys {
		return b, fmt.Errorf("session %v: %d keys exceed %d", s.Key, len(s.Keys), MaxKeys)
	}
	b = binary.LittleEndian.AppendUint64(b, s.ID)
	b, _ = s.Key.AppendBinary(b)
	b = append(b, byte(len(s.Keys)))
	for _, k := range s.Keys {
		b, _ = k.AppendBinary(b)
	}
	b = binary.LittleEndian.AppendUint16(b, s.Loop)
	b = appendAddrPort(b, s.Peer)
	b = appendAddrPort(b, s.Local)
	for _, v := range []uint64{uint64(s.Created), uint64(s.IdleLeft), uint64(s.IdleTimeout),
		s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(s.Upstream))
	var flags byte
	if s.Retained {
		flags |= flagRetained
	}
	b = append(b, flags|byte(s.Change)<<1)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s.State)))
	return append(b, s.State...), nil
}

// DecodeSessions decodes a Sessions message: a count, then records. It
// checks every field and refuses anything left over.
func DecodeSessions(p []byte) ([]Session, error) {
	d := decoder{b: p}
	n := int(d.u32())
	if d.err == nil && n > len(p)/minSessionSize {
		return nil, fmt.Errorf("sessions: count %d cannot fit in %d bytes: %w", n, len(p), ErrCorrupt)
	}
	out := make([]Session, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var s Session
		s.ID = d.u64()
		if err := s.Key.UnmarshalBinary(d.bytes(flowtable.KeySize)); err != nil && d.err == nil {
			d.fail(fmt.Errorf("session %d key: %w", i, err))
		}
		if nk := int(d.u8()); nk > 0 && d.err == nil {
			if nk > MaxKeys {
				d.fail(fmt.Errorf("session %d: %d keys: %w", i, nk, ErrCorrupt))
			}
			for j := 0; j < nk && d.err == nil; j++ {
				var k flowtable.Key
				if err := k.UnmarshalBinary(d.bytes(flowtable.KeySize)); err != nil && d.err == nil {
					d.fail(fmt.Errorf("session %d key %d: %w", i, j, err))
				}
				s.Keys = append(s.Keys, k)
			}
		}
		s.Loop = d.u16()
		s.Peer, s.Local = d.addrPort(), d.addrPort()
		s.Created, s.IdleLeft, s.IdleTimeout = int64(d.u64()), int64(d.u64()), int64(d.u64())
		s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes = d.u64(), d.u64(), d.u64(), d.u64()
		s.Upstream = int32(d.u32())
		flags := d.u8()
		s.Retained = flags&flagRetained != 0
		s.Change = Change(flags&(flagUpdate|flagGone)) >> 1
		s.State = append([]byte(nil), d.bytes(int(d.u16()))...)
		if d.err == nil && flags&^knownFlags != 0 {
			d.fail(fmt.Errorf("session %d: unknown flags %#x: %w", i, flags, ErrCorrupt))
		}
		if d.err == nil {
			if err := s.check(); err != nil {
				d.fail(fmt.Errorf("session %d: %w", i, err))
			}
		}
		out = append(out, s)
	}
	if err := d.finish("sessions"); err != nil {
		return nil, err
	}
	return out, nil
}

const minSessionSize = 8 + flowtable.KeySize + 1 + 2 + 2*addrPortSize + 7*8 + 4 + 1 + 2

func (s *Session) check() error {
	switch {
	case s.Key.Kind() == flowtable.KindNone:
		return errors.New("empty key")
	case s.ID == 0:
		return errors.New("no session ID")
	case !s.Peer.IsValid():
		return errors.New("no peer address")
	case s.IdleTimeout <= 0:
		return fmt.Errorf("idle timeout %d", s.IdleTimeout)
	case s.Upstream < -1:
		return fmt.Errorf("upstream index %d", s.Upstream)
	case len(s.State) > MaxState:
		return fmt.Errorf("state of %d bytes", len(s.State))
	case s.Retained && (s.Upstream != -1 || len(s.State) > 0):
		return fmt.Errorf("retained session with upstream %d and %d bytes of state", s.Upstream, len(s.State))
	case s.Change > ChangeGone:
		return errors.New("both update and gone")
	case s.Change != ChangeNew && (s.Retained || s.Upstream != -1 || len(s.State) > 0):
		return fmt.Errorf("change %d with retained %v, upstream %d and %d bytes of state", s.Change, s.Retained, s.Upstream, len(s.State))
	}
	for i, k := range s.Keys {
		if k.Scope() != s.Key.Scope() {
			return fmt.Errorf("key %d in listener %d, the session in %d", i, k.Scope(), s.Key.Scope())
		}
		for _, x := range s.Keys[:i] {
			if x == k {
				return fmt.Errorf("key %v twice", k)
			}
		}
	}
	return nil
}

// Anchor returns the key that holds the session's idle deadline: the first
// of Keys, or Key.
func (s *Session) Anchor() flowtable.Key {
	if len(s.Keys) > 0 {
		return s.Keys[0]
	}
	return s.Key
}

// End closes the state stream with totals the successor checks.
type End struct {
	Sessions, FDs uint64
}

// AppendEnd encodes e.
func AppendEnd(b []byte, e End) []byte {
	b = binary.LittleEndian.AppendUint64(b, e.Sessions)
	return binary.LittleEndian.AppendUint64(b, e.FDs)
}

// DecodeEnd decodes an End message.
func DecodeEnd(p []byte) (End, error) {
	d := decoder{b: p}
	e := End{Sessions: d.u64(), FDs: d.u64()}
	return e, d.finish("end")
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// An address travels as a family byte (0 none, 4, 6), 16 address bytes and
// the port.
const addrPortSize = 1 + 16 + 2

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	fam := byte(0)
	switch {
	case ap.Addr().Is4():
		fam = 4
	case ap.Addr().Is6():
		fam = 6
	}
	a := ap.Addr().As16()
	if fam == 0 {
		a = [16]byte{}
	}
	b = append(b, fam)
	b = append(b, a[:]...)
	return binary.LittleEndian.AppendUint16(b, ap.Port())
}

// decoder reads fields in order and remembers the first error, so that
// decoding code reads like the encoding and checks once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.fail(ErrTruncated)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.bytes(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.bytes(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.bytes(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str() string { return string(d.bytes(int(d.u16()))) }

func (d *decoder) addrPort() netip.AddrPort {
	fam := d.u8()
	raw := d.bytes(16)
	port := d.u16()
	if d.err != nil {
		return netip.AddrPort{}
	}
	a := netip.AddrFrom16([16]byte(raw))
	switch fam {
	case 0:
		if a != netip.AddrFrom16([16]byte{}) || port != 0 {
			d.fail(fmt.Errorf("empty address with content: %w", ErrCorrupt))
		}
		return netip.AddrPort{}
	case 4:
		if !a.Is4In6() {
			d.fail(fmt.Errorf("IPv4 address %v not in v4-mapped form: %w", a, ErrCorrupt))
		}
		return netip.AddrPortFrom(a.Unmap(), port)
	case 6:
		return netip.AddrPortFrom(a, port)
	}
	d.fail(fmt.Errorf("address family %d: %w", fam, ErrCorrupt))
	return netip.AddrPort{}
}

func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes left over: %w", len(d.b), ErrCorrupt)
	}
	if d.err != nil {
		return fmt.Errorf("%s: %w", what, d.err)
	}
	return nil
}

// SessionWriter batches session records into Sessions messages of at most
// MaxMessage bytes.
type SessionWriter struct {
	// BeforeFlush, when set, runs before each message is sent: the owner
	// sends the descriptors its records name first.
	BeforeFlush func() error

	c     *Conn
	buf   []byte
	rec   []byte
	count uint32
	total uint64
}

// NewSessionWriter returns a writer sending on c.
func NewSessionWriter(c *Conn) *SessionWriter {
	return &SessionWriter{c: c, buf: make([]byte, 4, MaxMessage)}
}

// Add queues s, sending a message first when s would not fit.
func (w *SessionWriter) Add(s *Session) error {
	var err error
	if w.rec, err = AppendSession(w.rec[:0], s); err != nil {
		return err
	}
	if len(w.buf)+len(w.rec) > MaxMessage {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	w.buf = append(w.buf, w.rec...)
	w.count++
	w.total++
	return nil
}

// Flush sends what is queued.
func (w *SessionWriter) Flush() error {
	if w.count == 0 {
		return nil
	}
	if w.BeforeFlush != nil {
		if err := w.BeforeFlush(); err != nil {
			return err
		}
	}
	binary.LittleEndian.PutUint32(w.buf, w.count)
	if err := w.c.Send(TypeSessions, w.buf, nil); err != nil {
		return err
	}
	w.buf, w.count = w.buf[:4], 0
	return nil
}

// Total returns how many records were added.
func (w *SessionWriter) Total() uint64 { return w.total }
