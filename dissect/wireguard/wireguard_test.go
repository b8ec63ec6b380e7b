package wireguard

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

var (
	testLocal = netip.MustParseAddrPort("198.18.0.1:51820")
	testPeer  = netip.MustParseAddrPort("198.18.0.2:40001")
	testPeer2 = netip.MustParseAddrPort("[2001:db8::2]:40002")
)

const testScope = 7

// message returns a message of type typ and length n whose bytes after
// the header count up from 0x10, so that every index field differs.
func message(typ byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(0x10 + i)
	}
	if n > 0 {
		p[0] = typ
	}
	for i := 1; i < 4 && i < n; i++ {
		p[i] = 0
	}
	return p
}

func with(p []byte, i int, b byte) []byte {
	p = bytes.Clone(p)
	p[i] = b
	return p
}

func mustID(t testing.TB, scope uint16, b []byte) flowtable.Key {
	t.Helper()
	k, err := flowtable.IDKey(scope, ClassIndex, b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCID(t testing.TB, scope uint16, b []byte) flowtable.Key {
	t.Helper()
	k, err := flowtable.CIDKey(scope, b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newDissector(t testing.TB, cfg Config) *Dissector {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// formatCases are datagrams with the offset of the receiver index Dissect
// must read (-1: none, an initiation) or drop (-2).
var formatCases = []struct {
	name string
	p    []byte
	recv int
}{
	{"initiation", message(1, 148), -1},
	{"initiation short", message(1, 147), -2},
	{"initiation long", message(1, 149), -2},
	{"initiation reserved 1", with(message(1, 148), 1, 1), -2},
	{"initiation reserved 2", with(message(1, 148), 2, 0x80), -2},
	{"initiation reserved 3", with(message(1, 148), 3, 1), -2},
	{"response", message(2, 92), 8},
	{"response short", message(2, 91), -2},
	{"response long", message(2, 93), -2},
	{"response as long as an initiation", message(2, 148), -2},
	{"response reserved 1", with(message(2, 92), 1, 2), -2},
	{"response reserved 3", with(message(2, 92), 3, 0xff), -2},
	{"cookie reply", message(3, 64), 4},
	{"cookie reply short", message(3, 63), -2},
	{"cookie reply long", message(3, 65), -2},
	{"cookie reply as long as a transport", message(3, 80), -2},
	{"cookie reply reserved 2", with(message(3, 64), 2, 1), -2},
	{"transport keepalive", message(4, 32), 4},
	{"transport 1 block", message(4, 48), 4},
	{"transport large", message(4, 32+16*90), 4},
	{"transport short", message(4, 31), -2},
	{"transport long by 1", message(4, 33), -2},
	{"transport long by 15", message(4, 47), -2},
	{"transport reserved 1", with(message(4, 48), 1, 1), -2},
	{"transport reserved 3", with(message(4, 32), 3, 1), -2},
	{"type 0", message(0, 148), -2},
	{"type 5", message(5, 64), -2},
	{"type 0x81", message(0x81, 148), -2},
	{"type 0xff transport size", message(0xff, 32), -2},
	{"type 0 reserved 1", with(message(0, 148), 1, 1), -2},
	{"empty", nil, -2},
	{"1 byte", []byte{4}, -2},
	{"3 bytes", []byte{4, 0, 0}, -2},
	{"4 bytes", []byte{4, 0, 0, 0}, -2},
	{"header only of each type", []byte{2, 0, 0, 0}, -2},
}

func TestDissectFormat(t *testing.T) {
	d := newDissector(t, Config{})
	for _, tc := range formatCases {
		for _, peer := range []netip.AddrPort{testPeer, testPeer2} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, peer), func(t *testing.T) {
				got := d.Dissect(tc.p, testLocal, peer, testScope)
				var want session.Dissection
				switch tc.recv {
				case -2:
					want = session.Dissection{Verdict: session.Drop}
				case -1:
					want = session.Dissection{Key: flowtable.TupleKey(testScope, testLocal, peer), Verdict: session.Create}
				default:
					want = session.Dissection{
						Key:     flowtable.TupleKey(testScope, testLocal, peer),
						ID:      mustID(t, testScope, tc.p[tc.recv:tc.recv+4]),
						Verdict: session.Lookup,
					}
				}
				if got != want {
					t.Errorf("Dissect = {%v %v %v}, want {%v %v %v}", got.Key, got.ID, got.Verdict, want.Key, want.ID, want.Verdict)
				}
			})
		}
	}
}

// TestDissectIndexes checks the receiver index against bytes written by
// hand, not by the same offsets the table uses.
func TestDissectIndexes(t *testing.T) {
	d := newDissector(t, Config{})
	idx := []byte{0xde, 0xad, 0xbe, 0xef}
	resp := make([]byte, 92)
	resp[0] = 2
	binary.LittleEndian.PutUint32(resp[4:], 0x11111111) // sender: not the key
	copy(resp[8:], idx)
	cookie := make([]byte, 64)
	cookie[0] = 3
	copy(cookie[4:], idx)
	data := make([]byte, 64)
	data[0] = 4
	copy(data[4:], idx)
	for _, p := range [][]byte{resp, cookie, data} {
		got := d.Dissect(p, testLocal, testPeer, 3)
		if want := mustID(t, 3, idx); got.ID != want || got.Verdict != session.Lookup {
			t.Errorf("type %d: ID %v verdict %v, want %v Lookup", p[0], got.ID, got.Verdict, want)
		}
		if got.ID.Class() != ClassIndex || got.ID.Scope() != 3 {
			t.Errorf("type %d: class %d scope %d", p[0], got.ID.Class(), got.ID.Scope())
		}
	}
}

func TestStats(t *testing.T) {
	d := newDissector(t, Config{})
	for _, tc := range formatCases {
		d.Dissect(tc.p, testLocal, testPeer, 0)
	}
	want := Stats{Initiations: 1} // the rest goes uncounted here: see Stats
	if got := d.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestNewRejectsNegativeRate(t *testing.T) {
	if _, err := New(Config{DecryptRate: -1}); err == nil {
		t.Error("New accepted a negative DecryptRate")
	}
}

// handshakeEnv holds the key pairs of the handshake tests.
type handshakeEnv struct {
	server, other, client, attacker keyPair
}

func newHandshakeEnv(t testing.TB) handshakeEnv {
	return handshakeEnv{
		server:   testKey(t, "server"),
		other:    testKey(t, "other server"),
		client:   testKey(t, "client"),
		attacker: testKey(t, "attacker"),
	}
}

func (e handshakeEnv) opts(t testing.TB, n int) initOpts {
	return initOpts{
		initiator: e.client,
		server:    e.server.pub,
		ephemeral: testKey(t, fmt.Sprint("ephemeral ", n)),
		sender:    uint32(0x01020300 + n),
		timestamp: [12]byte{0x40, 0, 0, 0, 0x6a, 0, 0, byte(n)},
	}
}

func TestInitiationStaticKey(t *testing.T) {
	e := newHandshakeEnv(t)
	valid := func(t *testing.T) []byte { return buildInitiation(t, e.opts(t, 1)) }
	remac := func(p []byte) []byte { setMAC1(p, e.server.pub); return p }
	tests := []struct {
		name   string
		msg    func(t *testing.T) []byte
		keyed  bool  // keyed by the client's static key
		result Stats // counters beyond Initiations
	}{
		{"valid", valid, true, Stats{StaticKeyed: 1}},
		{"mac2 set", func(t *testing.T) []byte {
			p := valid(t)
			for i := 132; i < 148; i++ {
				p[i] = byte(i)
			}
			return p
		}, true, Stats{StaticKeyed: 1}},
		{"for another server", func(t *testing.T) []byte {
			o := e.opts(t, 2)
			o.server = e.other.pub
			return buildInitiation(t, o)
		}, false, Stats{MAC1Mismatches: 1}},
		{"for another server, mac1 for this one", func(t *testing.T) []byte {
			o := e.opts(t, 3)
			o.server = e.other.pub
			o.mac1For = &e.server.pub
			return buildInitiation(t, o)
		}, false, Stats{DecryptFailures: 1}},
		{"bad mac1", func(t *testing.T) []byte {
			p := valid(t)
			p[120] ^= 1
			return p
		}, false, Stats{MAC1Mismatches: 1}},
		{"corrupted ephemeral", func(t *testing.T) []byte {
			p := valid(t)
			p[20] ^= 4
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"zero ephemeral", func(t *testing.T) []byte {
			p := valid(t)
			clear(p[8:40])
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"corrupted static", func(t *testing.T) []byte {
			p := valid(t)
			p[50] ^= 0x10
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"corrupted static tag", func(t *testing.T) []byte {
			p := valid(t)
			p[87] ^= 1
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"corrupted timestamp", func(t *testing.T) []byte {
			p := valid(t)
			p[90] ^= 1
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"corrupted timestamp tag", func(t *testing.T) []byte {
			p := valid(t)
			p[115] ^= 0x80
			return remac(p)
		}, false, Stats{DecryptFailures: 1}},
		{"impersonation: client's static, attacker's DH", func(t *testing.T) []byte {
			o := e.opts(t, 4)
			o.dhKey = &e.attacker
			return buildInitiation(t, o)
		}, false, Stats{DecryptFailures: 1}},
		{"static key of low order", func(t *testing.T) []byte {
			o := e.opts(t, 5)
			o.initiator = keyPair{} // public key 0, a point of small order
			o.dhKey = &e.client
			return buildInitiation(t, o)
		}, false, Stats{DecryptFailures: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDissector(t, Config{PrivateKey: &e.server.priv})
			p := tc.msg(t)
			got := d.Dissect(p, testLocal, testPeer, testScope)
			want := session.Dissection{Key: flowtable.TupleKey(testScope, testLocal, testPeer), Verdict: session.Create}
			if tc.keyed {
				want.Key = mustCID(t, testScope, e.client.pub[:20])
			}
			if got != want {
				t.Errorf("Dissect = {%v %v %v}, want {%v %v %v}", got.Key, got.ID, got.Verdict, want.Key, want.ID, want.Verdict)
			}
			tc.result.Initiations = 1
			if s := d.Stats(); s != tc.result {
				t.Errorf("Stats = %+v, want %+v", s, tc.result)
			}
			if k := d.Track(testScope).Server(newHolder(testScope), p); k != mustID(t, testScope, p[4:8]) {
				t.Errorf("Server = %v, want the sender index", k)
			}
		})
	}
}

// Every initiation of one client, from any address, with any ephemeral
// key, gets one key; another client gets another.
func TestInitiationSameClientOneKey(t *testing.T) {
	e := newHandshakeEnv(t)
	d := newDissector(t, Config{PrivateKey: &e.server.priv})
	want := mustCID(t, 2, e.client.pub[:20])
	for i, peer := range []netip.AddrPort{testPeer, testPeer2, netip.MustParseAddrPort("198.18.0.9:1")} {
		got := d.Dissect(buildInitiation(t, e.opts(t, 10+i)), testLocal, peer, 2)
		if got.Key != want || got.Verdict != session.Create || got.ID != (flowtable.Key{}) {
			t.Errorf("from %v: %v %v %v, want %v Create", peer, got.Key, got.ID, got.Verdict, want)
		}
	}
	o := e.opts(t, 20)
	o.initiator = e.attacker
	if got := d.Dissect(buildInitiation(t, o), testLocal, testPeer, 2); got.Key != mustCID(t, 2, e.attacker.pub[:20]) {
		t.Errorf("another client: key %v", got.Key)
	}
}

// Without a key, a valid initiation is keyed by 4-tuple and nothing is
// decrypted.
func TestInitiationWithoutKey(t *testing.T) {
	e := newHandshakeEnv(t)
	d := newDissector(t, Config{})
	got := d.Dissect(buildInitiation(t, e.opts(t, 1)), testLocal, testPeer, 1)
	if want := flowtable.TupleKey(1, testLocal, testPeer); got.Key != want || got.Verdict != session.Create {
		t.Errorf("Dissect = %v %v, want %v Create", got.Key, got.Verdict, want)
	}
	if s := d.Stats(); s != (Stats{Initiations: 1}) {
		t.Errorf("Stats = %+v", s)
	}
}

func TestRateLimit(t *testing.T) {
	e := newHandshakeEnv(t)
	msg := buildInitiation(t, e.opts(t, 1))
	keyed := mustCID(t, 0, e.client.pub[:20])
	tuple := flowtable.TupleKey(0, testLocal, testPeer)

	// 20 per second: bursts of 2, then one each 50 ms.
	d := newDissector(t, Config{PrivateKey: &e.server.priv, DecryptRate: 20})
	var now int64
	d.clock = func() int64 { return now }
	steps := []struct {
		at   int64 // ms
		want flowtable.Key
	}{
		{0, keyed}, {0, keyed}, {0, tuple}, {0, tuple},
		{49, tuple}, {50, keyed}, {50, tuple},
		{1000, keyed}, {1000, keyed}, {1000, tuple},
	}
	for i, s := range steps {
		now = s.at * 1e6
		if got := d.Dissect(msg, testLocal, testPeer, 0).Key; got != s.want {
			t.Errorf("step %d at %d ms: key %v, want %v", i, s.at, got, s.want)
		}
	}
	if s := d.Stats(); s.StaticKeyed != 5 || s.RateLimited != 5 || s.Initiations != 10 {
		t.Errorf("Stats = %+v, want 5 keyed, 5 rate-limited", s)
	}
	// A mac1 mismatch takes no token.
	d2 := newDissector(t, Config{PrivateKey: &e.server.priv, DecryptRate: 1})
	d2.clock = func() int64 { return 0 }
	bad := with(msg, 130, msg[130]^1)
	for range 5 {
		d2.Dissect(bad, testLocal, testPeer, 0)
	}
	if got := d2.Dissect(msg, testLocal, testPeer, 0).Key; got != keyed {
		t.Errorf("after mac1 mismatches: key %v, want the static key", got)
	}
}

// Goroutines sharing a Dissector share its rate: at one instant exactly a
// burst is decrypted, whoever asks.
func TestRateLimitShared(t *testing.T) {
	e := newHandshakeEnv(t)
	msg := buildInitiation(t, e.opts(t, 1))
	d := newDissector(t, Config{PrivateKey: &e.server.priv, DecryptRate: 300}) // burst 30
	d.clock = func() int64 { return 5e9 }
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			peer := netip.AddrPortFrom(testPeer.Addr(), uint16(g))
			for range 20 {
				d.Dissect(msg, testLocal, peer, 0)
			}
		})
	}
	wg.Wait()
	if s := d.Stats(); s.StaticKeyed != 30 || s.RateLimited != 130 || s.Initiations != 160 {
		t.Errorf("Stats = %+v, want 30 keyed and 130 rate-limited", s)
	}
}

// Dissect allocates nothing on every path but the decryption.
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, and Dissect allocate")
	}
	e := newHandshakeEnv(t)
	valid := buildInitiation(t, e.opts(t, 1))
	badMAC := with(valid, 116, valid[116]^1)
	plain := newDissector(t, Config{})
	keyed := newDissector(t, Config{PrivateKey: &e.server.priv})
	limited := newDissector(t, Config{PrivateKey: &e.server.priv, DecryptRate: 1})
	limited.clock = func() int64 { return 0 }
	limited.Dissect(valid, testLocal, testPeer, 0) // takes the only token
	cases := []struct {
		name string
		d    *Dissector
		p    []byte
	}{
		{"initiation, no key", plain, valid},
		{"initiation, mac1 mismatch", keyed, badMAC},
		{"initiation, rate-limited", limited, valid},
		{"response", keyed, message(2, 92)},
		{"cookie reply", keyed, message(3, 64)},
		{"transport", keyed, message(4, 1440)},
		{"malformed", keyed, message(4, 33)},
	}
	held := newHolder(1)
	for _, tc := range cases {
		tr := tc.d.Track(1)
		if n := testing.AllocsPerRun(100, func() {
			tc.d.Dissect(tc.p, testLocal, testPeer2, 1)
			tr.Client(held, tc.p, false)
			tr.Client(held, tc.p, true)
			tr.Server(held, tc.p)
			tr.Vouches(held, tc.p)
		}); n != 0 {
			t.Errorf("%s: %v allocations", tc.name, n)
		}
	}
}
