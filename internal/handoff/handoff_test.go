//go:build linux

package handoff

import (
	"bytes"
	"cmp"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
)

func sampleSessions() []Session {
	cid, _ := flowtable.CIDKey(1, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	idx, _ := flowtable.IDKey(1, 3, []byte{9, 9, 9, 9})
	moved := flowtable.TupleKey(1, netip.MustParseAddrPort("192.0.2.1:51820"), netip.MustParseAddrPort("[2001:db8::5]:443"))
	return []Session{
		{
			ID:   7,
			Key:  flowtable.TupleKey(0, netip.MustParseAddrPort("192.0.2.1:1194"), netip.MustParseAddrPort("198.51.100.7:40001")),
			Loop: 1, Peer: netip.MustParseAddrPort("198.51.100.7:40001"), Local: netip.MustParseAddrPort("192.0.2.1:1194"),
			Created: 1700000000000000000, IdleLeft: 5e9, IdleTimeout: 60e9,
			RxPackets: 10, RxBytes: 1000, TxPackets: 9, TxBytes: 900, Upstream: 3, State: []byte{0, 1},
		},
		{
			ID: 8, Key: cid, Keys: []flowtable.Key{cid, moved, idx},
			Peer: netip.MustParseAddrPort("[2001:db8::5]:443"), IdleLeft: -1, IdleTimeout: 1e9, Upstream: -1,
		},
		{
			ID:   9,
			Key:  flowtable.TupleKey(0, netip.MustParseAddrPort("192.0.2.1:1194"), netip.MustParseAddrPort("198.51.100.8:40002")),
			Loop: 2, Peer: netip.MustParseAddrPort("198.51.100.8:40002"), Local: netip.MustParseAddrPort("192.0.2.1:1194"),
			IdleLeft: 3e9, IdleTimeout: 60e9, RxPackets: 4, Upstream: -1, Retained: true,
		},
	}
}

func socketPair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "handoff")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return NewConn(c.(*net.UnixConn))
	}
	return conn(fds[0]), conn(fds[1])
}

func TestSessionsRoundTripOverASocketWithDescriptors(t *testing.T) {
	a, b := socketPair(t)
	w := NewSessionWriter(a)
	want := sampleSessions()
	for i := range want {
		if err := w.Add(&want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r, wr, _ := os.Pipe()
	defer r.Close()
	defer wr.Close()
	if err := a.Send(TypeFDs, nil, []int{int(r.Fd())}); err != nil {
		t.Fatal(err)
	}
	typ, p, fds, err := b.Recv()
	if err != nil || typ != TypeSessions || len(fds) != 0 {
		t.Fatalf("recv: %v %v %v", typ, fds, err)
	}
	got, err := DecodeSessions(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d sessions, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Key != want[i].Key || got[i].Peer != want[i].Peer || got[i].Local != want[i].Local ||
			got[i].TxBytes != want[i].TxBytes || got[i].Upstream != want[i].Upstream || got[i].Retained != want[i].Retained ||
			!bytes.Equal(got[i].State, want[i].State) {
			t.Errorf("session %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	typ, _, fds, err = b.Recv()
	if err != nil || typ != TypeFDs || len(fds) != 1 {
		t.Fatalf("fds message: %v %v %v", typ, fds, err)
	}
	// The received descriptor is the same pipe: writing to it shows up.
	unix.Close(fds[0])
}

func TestSessionWriterSplitsAtMaxMessage(t *testing.T) {
	a, b := socketPair(t)
	w := NewSessionWriter(a)
	s := sampleSessions()[0]
	s.State = make([]byte, MaxState)
	const n = 40 // 40 × ~4.2 KB needs several 64 KB messages
	go func() {
		for i := 0; i < n; i++ {
			w.Add(&s)
		}
		w.Flush()
		a.Send(TypeEnd, AppendEnd(nil, End{Sessions: w.Total()}), nil)
	}()
	total, msgs := 0, 0
	for {
		typ, p, _, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if typ == TypeEnd {
			break
		}
		got, err := DecodeSessions(p)
		if err != nil {
			t.Fatal(err)
		}
		total += len(got)
		msgs++
	}
	if total != n || msgs < 3 {
		t.Errorf("%d sessions in %d messages", total, msgs)
	}
}

func TestCorruptAndTruncatedInputIsRefused(t *testing.T) {
	var rec []byte
	s := sampleSessions()[0]
	rec = append(rec, 1, 0, 0, 0)
	rec, _ = AppendSession(rec, &s)
	frame := append([]byte{byte(TypeSessions)}, rec...)
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"flipped bit", func() error {
			f := append([]byte{}, frame...)
			f = append(f, 0, 0, 0, 0)
			f[10] ^= 1
			_, _, err := Unframe(f)
			return err
		}, ErrCorrupt},
		{"short frame", func() error { _, _, err := Unframe([]byte{1, 2}); return err }, ErrTruncated},
		{"truncated record", func() error { _, err := DecodeSessions(rec[:len(rec)-3]); return err }, ErrTruncated},
		{"trailing bytes", func() error { _, err := DecodeSessions(append(append([]byte{}, rec...), 9)); return err }, ErrCorrupt},
		{"huge count", func() error { _, err := DecodeSessions([]byte{0xff, 0xff, 0xff, 0x7f}); return err }, ErrCorrupt},
		{"bad address family", func() error {
			r := append([]byte{}, rec...)
			r[4+8+flowtable.KeySize+1+2] = 9
			_, err := DecodeSessions(r)
			return err
		}, ErrCorrupt},
		{"unknown session flag", func() error {
			r := append([]byte{}, rec...)
			r[flagsOffset()] = 8
			_, err := DecodeSessions(r)
			return err
		}, ErrCorrupt},
		{"session without ID", func() error { return decodeOne(func(r *Session) { r.ID = 0 }) }, nil},
		{"key of another listener", func() error {
			return decodeOne(func(r *Session) { r.Keys = []flowtable.Key{r.Key, r.Key.WithScope(9)} })
		}, nil},
		{"key twice", func() error { return decodeOne(func(r *Session) { r.Keys = []flowtable.Key{r.Key, r.Key} }) }, nil},
		{"too many keys", func() error {
			r := sampleSessions()[0]
			r.Keys = make([]flowtable.Key, MaxKeys+1)
			_, err := AppendSession(nil, &r)
			return err
		}, nil},
		{"truncated relay", func() error { _, _, _, err := DecodeRelay(make([]byte, RelayHeaderSize-1)); return err }, ErrTruncated},
		{"relay without a peer", func() error {
			r := AppendRelay(nil, s.ID, netip.AddrPort{}, []byte("x"))
			_, _, _, err := DecodeRelay(r)
			return err
		}, ErrCorrupt},
		{"long ended notice", func() error { _, err := DecodeEnded(append(AppendEnded(nil, s.ID), 0)); return err }, ErrCorrupt},
		{"relays without listeners", func() error {
			_, err := DecodeListeners(AppendListeners(nil, Listeners{Relays: 2}))
			return err
		}, ErrCorrupt},
		{"relays for another loop count", func() error {
			_, err := DecodeListeners(AppendListeners(nil, Listeners{
				Listeners: []Listener{{"x", netip.MustParseAddrPort("1.2.3.4:5"), 2}}, Files: 1, Relays: 3}))
			return err
		}, ErrCorrupt},
		{"too many application descriptors", func() error {
			_, err := DecodeListeners(AppendListeners(nil, Listeners{
				Listeners: []Listener{{"x", netip.MustParseAddrPort("1.2.3.4:5"), 2}}, Files: MaxFiles + 1}))
			return err
		}, ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if tc.want == nil && err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, cmp.Or[any](tc.want, "an error"))
			}
		})
	}
}

// decodeOne encodes the first sample session changed by change and decodes
// it.
func decodeOne(change func(*Session)) error {
	r := sampleSessions()[0]
	change(&r)
	b, err := AppendSession([]byte{1, 0, 0, 0}, &r)
	if err != nil {
		return err
	}
	_, err = DecodeSessions(b)
	return err
}

// flagsOffset is where a record's flags byte lies in a Sessions message
// holding only that record.
func flagsOffset() int {
	return 4 + 8 + flowtable.KeySize + 1 + 2 + 2*addrPortSize + 7*8 + 4
}

func TestRetainedSessionRoundTrip(t *testing.T) {
	want := sampleSessions()[2]
	b, err := AppendSession([]byte{1, 0, 0, 0}, &want)
	if err != nil {
		t.Fatal(err)
	}
	if b[flagsOffset()] != flagRetained {
		t.Fatalf("flags byte %#x, want %#x", b[flagsOffset()], flagRetained)
	}
	got, err := DecodeSessions(b)
	if err != nil || len(got) != 1 || !got[0].Retained || got[0].Key != want.Key || got[0].Upstream != -1 || got[0].Loop != 2 {
		t.Fatalf("got %+v, %v", got, err)
	}
	// A retained record carries neither state nor a socket of its own.
	for name, mutate := range map[string]func(*Session){
		"with state":    func(s *Session) { s.State = []byte{1} },
		"with upstream": func(s *Session) { s.Upstream = 0 },
	} {
		s := want
		mutate(&s)
		b, _ := AppendSession([]byte{1, 0, 0, 0}, &s)
		if _, err := DecodeSessions(b); err == nil {
			t.Errorf("a retained record %s decoded", name)
		}
	}
	// Migrated records keep the flag clear.
	m := sampleSessions()[0]
	b, _ = AppendSession([]byte{1, 0, 0, 0}, &m)
	if b[flagsOffset()] != 0 {
		t.Errorf("migrated record's flags byte %#x", b[flagsOffset()])
	}
}

func TestChangeRecords(t *testing.T) {
	base := sampleSessions()[0]
	base.Upstream, base.State = -1, nil
	tests := []struct {
		name   string
		change Change
		mutate func(*Session)
		flags  byte // what the flags byte must become; 0xff: refused
	}{
		{"new", ChangeNew, nil, 0},
		{"update", ChangeUpdate, nil, flagUpdate},
		{"gone", ChangeGone, nil, flagGone},
		{"update with a socket", ChangeUpdate, func(s *Session) { s.Upstream = 0 }, 0xff},
		{"gone with state", ChangeGone, func(s *Session) { s.State = []byte{1} }, 0xff},
		{"retained update", ChangeUpdate, func(s *Session) { s.Retained = true }, 0xff},
		{"update and gone", ChangeUpdate | ChangeGone, nil, 0xff},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base
			s.Change = tc.change
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			b, err := AppendSession([]byte{1, 0, 0, 0}, &s)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeSessions(b)
			if tc.flags == 0xff {
				if err == nil {
					t.Fatalf("decoded %+v", got)
				}
				return
			}
			if b[flagsOffset()] != tc.flags {
				t.Errorf("flags byte %#x, want %#x", b[flagsOffset()], tc.flags)
			}
			if err != nil || len(got) != 1 || got[0].Change != tc.change || got[0].Created != s.Created {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
}

func TestRelayFraming(t *testing.T) {
	s := sampleSessions()[1]
	peer := netip.MustParseAddrPort("[2001:db8::9]:4433")
	b := AppendRelay(make([]byte, 0, 128), s.ID, peer, []byte("payload"))
	if len(b) != RelayHeaderSize+len("payload") {
		t.Fatalf("relayed datagram of %d bytes", len(b))
	}
	id, p, payload, err := DecodeRelay(b)
	if err != nil || id != s.ID || p != peer || string(payload) != "payload" {
		t.Fatalf("decoded %v %v %q %v", id, p, payload, err)
	}
	if _, _, payload, err := DecodeRelay(AppendRelay(nil, s.ID, peer, nil)); err != nil || len(payload) != 0 {
		t.Fatalf("empty payload: %q %v", payload, err)
	}
	k, err := DecodeEnded(AppendEnded(nil, s.ID))
	if err != nil || k != s.ID {
		t.Fatalf("ended: %v %v", k, err)
	}
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendRelay(buf[:0], s.ID, peer, []byte("payload"))
		DecodeRelay(buf)
	}); n != 0 {
		t.Errorf("relay framing allocates %v times per datagram", n)
	}
}

func TestHelloListenersEnd(t *testing.T) {
	h, err := DecodeHello(AppendHello(nil, Hello{Version: Version, PID: 42, Meta: []byte("workers: 1")}))
	if err != nil || h.Version != Version || h.PID != 42 || string(h.Meta) != "workers: 1" {
		t.Errorf("hello: %+v %v", h, err)
	}
	ls := Listeners{Listeners: []Listener{{"vpn", netip.MustParseAddrPort("[::]:1194"), 2}}, Files: 1}
	got, err := DecodeListeners(AppendListeners(nil, ls))
	if err != nil || len(got.Listeners) != 1 || got.Listeners[0] != ls.Listeners[0] || got.Files != 1 {
		t.Errorf("listeners: %+v %v", got, err)
	}
	ls.Relays = 2
	ls.Listeners[0].Sockets = 2
	if got, err := DecodeListeners(AppendListeners(nil, ls)); err != nil || got.Relays != 2 {
		t.Errorf("listeners with relays: %+v %v", got, err)
	}
	if _, err := DecodeListeners(AppendListeners(nil, Listeners{Listeners: []Listener{{"x", netip.MustParseAddrPort("1.2.3.4:5"), 0}}})); err == nil {
		t.Error("a listener with no sockets decoded")
	}
	e, err := DecodeEnd(AppendEnd(nil, End{Sessions: 7, FDs: 3}))
	if err != nil || e.Sessions != 7 || e.FDs != 3 {
		t.Errorf("end: %+v %v", e, err)
	}
}

// FuzzDecodeSessions: no input panics, and what decodes re-encodes to the
// same bytes.
func FuzzDecodeSessions(f *testing.F) {
	for _, s := range sampleSessions() {
		b, _ := AppendSession([]byte{1, 0, 0, 0}, &s)
		f.Add(b)
	}
	for _, c := range []Change{ChangeUpdate, ChangeGone} {
		s := sampleSessions()[1]
		s.Change = c
		b, _ := AppendSession([]byte{1, 0, 0, 0}, &s)
		f.Add(b)
	}
	f.Add([]byte{0, 0, 0, 0})
	all, _ := AppendSession([]byte{3, 0, 0, 0}, &sampleSessions()[0])
	for _, s := range sampleSessions()[1:] {
		all, _ = AppendSession(all, &s)
	}
	f.Add(all)
	f.Fuzz(func(t *testing.T, p []byte) {
		got, err := DecodeSessions(p)
		if err != nil {
			return
		}
		out := make([]byte, 4)
		out[0], out[1], out[2], out[3] = byte(len(got)), byte(len(got)>>8), byte(len(got)>>16), byte(len(got)>>24)
		for i := range got {
			if out, err = AppendSession(out, &got[i]); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(out, p) {
			t.Fatalf("re-encoding differs:\n%x\n%x", p, out)
		}
	})
}

// Relayed datagrams and ended notices travel unframed on their own sockets;
// the frame fuzzer reaches their decoders through type bytes no message uses.
const (
	relayFuzzType Type = 0xf0
	endedFuzzType Type = 0xf1
)

// FuzzDecodeFrame covers the frame check and every message decoder.
func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte{byte(TypeHello), 1, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(AppendListeners([]byte{byte(TypeListeners)}, Listeners{Listeners: []Listener{{"a", netip.MustParseAddrPort("1.2.3.4:5"), 1}}}))
	f.Add(AppendListeners([]byte{byte(TypeListeners)}, Listeners{
		Listeners: []Listener{{"a", netip.MustParseAddrPort("1.2.3.4:5"), 2}}, Files: 1, Relays: 2}))
	rec := sampleSessions()[2]
	f.Add(AppendRelay([]byte{byte(relayFuzzType)}, rec.ID, rec.Peer, []byte("hello")))
	f.Add(AppendEnded([]byte{byte(endedFuzzType)}, rec.ID))
	f.Fuzz(func(t *testing.T, msg []byte) {
		Unframe(msg)
		if len(msg) == 0 {
			return
		}
		p := msg[1:]
		switch Type(msg[0]) {
		case TypeHello:
			DecodeHello(p)
		case TypeListeners:
			DecodeListeners(p)
		case TypeEnd:
			DecodeEnd(p)
		case relayFuzzType:
			if key, peer, payload, err := DecodeRelay(p); err == nil {
				if out := AppendRelay(nil, key, peer, payload); !bytes.Equal(out, p) {
					t.Fatalf("relay re-encoding differs:\n%x\n%x", p, out)
				}
			}
		case endedFuzzType:
			if key, err := DecodeEnded(p); err == nil && !bytes.Equal(AppendEnded(nil, key), p) {
				t.Fatalf("ended notice re-encoding differs")
			}
		default:
			DecodeSessions(p)
		}
	})
}

// TestIdleTimeoutBoundsEachStep: with an idle timeout, an exchange longer
// than the timeout lasts as long as messages keep coming; silence ends it,
// and a deadline set on top still bounds the whole.
func TestIdleTimeoutBoundsEachStep(t *testing.T) {
	a, b := socketPair(t)
	b.SetIdleTimeout(time.Second)
	go func() {
		for range 15 { // 1.5 s in all, 100 ms apart
			a.Send(TypeFDs, nil, nil)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	for i := range 15 {
		if _, _, _, err := b.Recv(); err != nil {
			t.Fatalf("message %d of a steady stream: %v", i, err)
		}
	}
	start := time.Now()
	if _, _, _, err := b.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silence: %v, want a deadline error", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("silence ended after %v, before the idle timeout", d)
	}
	b.SetDeadline(time.Now().Add(100 * time.Millisecond))
	start = time.Now()
	if _, _, _, err := b.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 900*time.Millisecond {
		t.Errorf("with a deadline before the idle timeout: %v after %v", err, time.Since(start))
	}
}

// TestTypeValues pins the message types' numbers: they are the wire's, and
// a udpmux of another version must read them alike (new ones go at the
// end).
func TestTypeValues(t *testing.T) {
	tests := []struct {
		typ  Type
		want uint8
	}{
		{TypeHello, 1}, {TypeStatus, 10}, {TypeSessionList, 11}, {TypeText, 12}, {TypeTextEnd, 13},
		{TypeReady, 15}, {TypeDrain, 17}, {TypeBackend, 18}, {TypeBackendState, 19}, {TypeFailed, 20},
	}
	for _, tt := range tests {
		if uint8(tt.typ) != tt.want {
			t.Errorf("type %d, want %d", tt.typ, tt.want)
		}
	}
}
