package quiclb

import (
	"bytes"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 16)
	for _, tc := range []struct {
		c    Config
		want string // substring of the error; "" for a valid config
	}{
		{Config{Rotation: 0, ServerIDLen: 1, NonceLen: 4}, ""},
		{Config{Rotation: 6, ServerIDLen: 15, NonceLen: 4, Key: key}, ""},
		{Config{Rotation: 3, ServerIDLen: 1, NonceLen: 18, Key: key}, ""},
		{Config{Rotation: 1, ServerIDLen: 8, NonceLen: 8, Key: key}, ""},
		{Config{Rotation: 7, ServerIDLen: 2, NonceLen: 4}, "reserved for unroutable"},
		{Config{Rotation: 8, ServerIDLen: 2, NonceLen: 4}, "config rotation 8 is not in 0..6"},
		{Config{Rotation: 0, ServerIDLen: 0, NonceLen: 4}, "server ID length 0 is not in 1..15"},
		{Config{Rotation: 0, ServerIDLen: 16, NonceLen: 4}, "server ID length 16"},
		{Config{Rotation: 0, ServerIDLen: 2, NonceLen: 3}, "nonce length 3 is not in 4..18"},
		{Config{Rotation: 0, ServerIDLen: 1, NonceLen: 19}, "nonce length 19"},
		{Config{Rotation: 0, ServerIDLen: 10, NonceLen: 10}, "add up to 20, more than 19"},
		{Config{Rotation: 0, ServerIDLen: 2, NonceLen: 4, Key: key[:15]}, "key of 15 octets"},
		{Config{Rotation: 0, ServerIDLen: 2, NonceLen: 4, Key: []byte{}}, "key of 0 octets"},
	} {
		err := tc.c.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.c, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v; want one with %q", tc.c, err, tc.want)
		}
		if _, err := NewDecoder(tc.c); err == nil {
			t.Errorf("NewDecoder(%v) accepted it", tc.c)
		}
		if _, err := NewEncoder(tc.c, ServerID{}); err == nil {
			t.Errorf("NewEncoder(%v) accepted it", tc.c)
		}
	}
}

func TestAlgorithmChoice(t *testing.T) {
	key := make([]byte, 16)
	for _, tc := range []struct {
		sid, nonce int
		key        []byte
		want       Algorithm
	}{
		{2, 4, nil, Plaintext}, {8, 8, nil, Plaintext}, {8, 8, key, SinglePass},
		{1, 15, key, SinglePass}, {12, 4, key, SinglePass}, {1, 4, key, FourPass},
		{2, 4, key, FourPass}, {9, 8, key, FourPass}, {1, 18, key, FourPass},
	} {
		c := Config{ServerIDLen: tc.sid, NonceLen: tc.nonce, Key: tc.key}
		if got := c.Algorithm(); got != tc.want {
			t.Errorf("%d+%d key %v: %v; want %v", tc.sid, tc.nonce, tc.key != nil, got, tc.want)
		}
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("rotation=2, server-id-len=3,nonce-len=5,key=8f95f09245765f80256934e50c66207f,encode-length")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Rotation: 2, ServerIDLen: 3, NonceLen: 5, Key: unhex(t, draftKey), EncodeLength: true}
	if c.String() != want.String() || !bytes.Equal(c.Key, want.Key) || c.EncodeLength != want.EncodeLength {
		t.Fatalf("got %v; want %v", c, want)
	}
	back, err := ParseConfig(c.String())
	if err != nil || back.String() != c.String() {
		t.Fatalf("round trip of %q: %v, %v", c.String(), back, err)
	}
	var u Config
	if err := u.UnmarshalText([]byte("nonce-len=4,rotation=0,server-id-len=1")); err != nil || u.Key != nil || u.NonceLen != 4 {
		t.Fatalf("UnmarshalText: %v, %v", u, err)
	}
	for _, bad := range []struct{ s, want string }{
		{"", "unknown field"},
		{"rotation=0,server-id-len=2", "nonce-len missing"},
		{"rotation=0,server-id-len=2,nonce-len=4,rotation=1", "rotation given twice"},
		{"rotation=x,server-id-len=2,nonce-len=4", `rotation="x" is not a number`},
		{"rotation=7,server-id-len=2,nonce-len=4", "reserved"},
		{"rotation=0,server-id-len=2,nonce-len=4,key=abcd", "not 32 hex digits"},
		{"rotation=0,server-id-len=2,nonce-len=4,colour=red", `unknown field "colour=red"`},
		{"rotation=0,server-id-len=12,nonce-len=8", "add up to 20"},
	} {
		_, err := ParseConfig(bad.s)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseConfig(%q): %v; want an error with %q", bad.s, err, bad.want)
		}
	}
}

func TestServerID(t *testing.T) {
	if _, err := ServerIDFromBytes(nil); err == nil {
		t.Error("empty server ID accepted")
	}
	if _, err := ServerIDFromBytes(make([]byte, 16)); err == nil {
		t.Error("16-octet server ID accepted")
	}
	if _, err := ParseServerID("zz"); err == nil {
		t.Error("non-hex server ID accepted")
	}
	a, _ := ParseServerID("0102")
	b, _ := ServerIDFromBytes([]byte{1, 2})
	c, _ := ServerIDFromBytes([]byte{1, 2, 0})
	if a != b || a == c || a.String() != "0102" || a.Len() != 2 || !bytes.Equal(a.Bytes(), []byte{1, 2}) {
		t.Errorf("server IDs: %v %v %v", a, b, c)
	}
	var u ServerID
	if err := u.UnmarshalText([]byte("0102")); err != nil || u != a {
		t.Errorf("UnmarshalText: %v %v", u, err)
	}
	if _, err := NewEncoder(Config{ServerIDLen: 3, NonceLen: 4}, a); err == nil {
		t.Error("encoder with a 2-octet server ID for a 3-octet config")
	}
}

// allConfigs returns a configuration of every length combination and
// algorithm, with and without length self-description.
func allConfigs() []Config {
	key := unhexMust("8f95f09245765f80256934e50c66207f")
	var cs []Config
	for sid := MinServerIDLen; sid <= MaxServerIDLen; sid++ {
		for nonce := MinNonceLen; sid+nonce <= MaxPlaintextLen; nonce++ {
			for _, k := range [][]byte{nil, key} {
				for _, enc := range []bool{false, true} {
					cs = append(cs, Config{Rotation: uint8((sid + nonce) % 7), ServerIDLen: sid, NonceLen: nonce, Key: k, EncodeLength: enc})
				}
			}
		}
	}
	return cs
}

func unhexMust(s string) []byte {
	b := make([]byte, len(s)/2)
	for i := range b {
		b[i] = hexDigit(s[2*i])<<4 | hexDigit(s[2*i+1])
	}
	return b
}

func hexDigit(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// TestRoundTrip encodes connection IDs of every configuration for several
// server IDs and decodes them.
func TestRoundTrip(t *testing.T) {
	for _, c := range allConfigs() {
		d, err := NewDecoder(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, fill := range []byte{0x00, 0x5a, 0xff} {
			sid, _ := ServerIDFromBytes(bytes.Repeat([]byte{fill}, c.ServerIDLen))
			e, err := NewEncoder(c, sid)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for range 20 {
				cid, err := e.NewCID()
				if err != nil {
					t.Fatal(err)
				}
				if len(cid) != c.CIDLen() || e.CIDLen() != c.CIDLen() {
					t.Fatalf("%v: CID %x of %d octets; want %d", c, cid, len(cid), c.CIDLen())
				}
				if cid[0]>>5 != c.Rotation {
					t.Fatalf("%v: CID %x has rotation %d", c, cid, cid[0]>>5)
				}
				if c.EncodeLength && int(cid[0]&0x1f) != len(cid)-1 {
					t.Fatalf("%v: CID %x does not encode its length", c, cid)
				}
				if c.Key != nil && c.ServerIDLen >= 4 && bytes.Equal(cid[1:1+c.ServerIDLen], sid.Bytes()) {
					// Possible by chance, 2^-8n for n octets: among the few
					// thousand CIDs of this test, a 2-octet server ID shows
					// in clear in about one run of ten.
					t.Errorf("%v: CID %x shows its server ID in clear", c, cid)
				}
				if r := d.Decode(cid); r.Status != Routable || r.ServerID != sid || r.Rotation != c.Rotation {
					t.Fatalf("%v: decode %x: %+v; want %v", c, cid, r, sid)
				}
				if seen[string(cid)] {
					t.Fatalf("%v: CID %x twice", c, cid)
				}
				seen[string(cid)] = true
				// Each CID is a permutation of its plaintext: decrypt
				// gives back the nonce too.
				if c.Key != nil {
					k := d.codecs[c.Rotation]
					s := new(scratch)
					k.decrypt(s, s.pt[:], cid[1:])
					if k.fourth || k.alg == SinglePass {
						var re [MaxCIDLen]byte
						re[0] = cid[0]
						k.encrypt(new(scratch), re[1:], s.pt[:k.plen])
						if !bytes.Equal(re[:len(cid)], cid) {
							t.Fatalf("%v: re-encrypting the plaintext of %x gives %x", c, cid, re[:len(cid)])
						}
					}
				}
			}
		}
	}
}

func TestDecodeUnroutable(t *testing.T) {
	key := unhex(t, draftKey)
	c0 := Config{Rotation: 0, ServerIDLen: 2, NonceLen: 4, Key: key, EncodeLength: true}
	c5 := Config{Rotation: 5, ServerIDLen: 3, NonceLen: 6}
	d, err := NewDecoder(c0, c5)
	if err != nil {
		t.Fatal(err)
	}
	sid5, _ := ParseServerID("abcdef")
	for _, tc := range []struct {
		name string
		cid  string
		want Status
		rot  uint8
		sid  ServerID
	}{
		{"empty", "", TooShort, 0, ServerID{}},
		{"reserved 0b111", "e7" + "00112233445566", Reserved, 7, ServerID{}},
		{"reserved 0b111, 20 octets", "f3" + strings.Repeat("ab", 19), Reserved, 7, ServerID{}},
		{"reserved 0b111, 1 octet", "ff", Reserved, 7, ServerID{}},
		{"no config at 1", "20" + "00112233445566", NoConfig, 1, ServerID{}},
		{"no config at 6", "c0" + "0011223344", NoConfig, 6, ServerID{}},
		{"too short for config 0", "05" + "0011223344", TooShort, 0, ServerID{}},
		{"first octet only", "06", TooShort, 0, ServerID{}},
		{"length bits disagree", "07" + "001122334455", BadLength, 0, ServerID{}},
		{"length bits one too many", "08" + "00112233445566", BadLength, 0, ServerID{}},
		{"plaintext config 5", "a0" + "abcdef" + "010203040506", Routable, 5, sid5},
		{"plaintext config 5, extra octets", "bf" + "abcdef" + "010203040506" + "0708", Routable, 5, sid5},
		{"plaintext config 5, too short", "a0" + "abcdef" + "0102030405", TooShort, 5, ServerID{}},
	} {
		r := d.Decode(unhex(t, tc.cid))
		if r.Status != tc.want || r.Rotation != tc.rot || r.ServerID != tc.sid {
			t.Errorf("%s: %x: %+v (%v); want %v rotation %d server %v", tc.name, unhex(t, tc.cid), r, r.Status, tc.want, tc.rot, tc.sid)
		}
		if r.Routable() != (tc.want == Routable) {
			t.Errorf("%s: Routable() = %v", tc.name, r.Routable())
		}
	}
	// A CID of config 0 with the right length decodes to some server ID.
	if r := d.Decode(unhex(t, "06001122334455")); r.Status != Routable || r.ServerID.Len() != 2 {
		t.Errorf("a 7-octet CID of config 0: %+v", r)
	}
	var none *Decoder
	if r := none.Decode(unhex(t, "0700112233445566")); r.Status != NoConfig {
		t.Errorf("nil decoder: %v", r.Status)
	}
	if r := none.Decode(unhex(t, "e700112233445566")); r.Status != Reserved {
		t.Errorf("nil decoder, 0b111: %v", r.Status)
	}
	if n, ok := d.CIDLen(0xa5); !ok || n != 10 {
		t.Errorf("CIDLen(config 5) = %d, %v", n, ok)
	}
	if _, ok := d.CIDLen(0x20); ok {
		t.Error("CIDLen of a missing config")
	}
	if _, ok := d.CIDLen(0xe0); ok {
		t.Error("CIDLen of 0b111")
	}
	if got, ok := d.Config(0); !ok || !bytes.Equal(got.Key, key) || got.ServerIDLen != 2 {
		t.Errorf("Config(0) = %v, %v", got, ok)
	}
	if _, ok := none.Config(0); ok {
		t.Error("nil decoder has a config")
	}
}

func TestNewDecoderDuplicateRotation(t *testing.T) {
	_, err := NewDecoder(Config{Rotation: 2, ServerIDLen: 1, NonceLen: 4}, Config{Rotation: 2, ServerIDLen: 2, NonceLen: 4})
	if err == nil || !strings.Contains(err.Error(), "configurations 0 and 1 both have config rotation 2") {
		t.Errorf("got %v", err)
	}
	_, err = NewDecoder(Config{Rotation: 2, ServerIDLen: 1, NonceLen: 4}, Config{Rotation: 7, ServerIDLen: 2, NonceLen: 4})
	if err == nil || !strings.Contains(err.Error(), "configuration 1: ") {
		t.Errorf("got %v", err)
	}
}

// TestKeyCopied: changing the caller's key slice afterwards changes
// nothing.
func TestKeyCopied(t *testing.T) {
	key := unhex(t, draftKey)
	c := Config{Rotation: 0, ServerIDLen: 3, NonceLen: 4, Key: key, EncodeLength: true}
	sid, _ := ParseServerID("ed793a")
	e, _ := NewEncoder(c, sid)
	d, _ := NewDecoder(c)
	key[0] ^= 0xff
	cid, _ := e.EncodeNonce(nil, unhex(t, "ee080dbf"), 0)
	if !bytes.Equal(cid, unhex(t, "0720b1d07b359d3c")) {
		t.Errorf("encoder uses the changed key: %x", cid)
	}
	if r := d.Decode(cid); r.ServerID != sid {
		t.Errorf("decoder uses the changed key: %v", r.ServerID)
	}
	e.Config().Key[0] ^= 0xff
	if cid2, _ := e.EncodeNonce(nil, unhex(t, "ee080dbf"), 0); !bytes.Equal(cid2, cid) {
		t.Error("Config() exposes the key")
	}
}

func TestEncodeNonceErrors(t *testing.T) {
	c := Config{Rotation: 3, ServerIDLen: 2, NonceLen: 4}
	sid, _ := ParseServerID("0102")
	e, _ := NewEncoder(c, sid)
	if _, err := e.EncodeNonce(nil, []byte{1, 2, 3}, 0); err == nil {
		t.Error("3-octet nonce accepted")
	}
	// Without length self-description the five low bits are the caller's.
	cid, _ := e.EncodeNonce([]byte{0xaa}, []byte{1, 2, 3, 4}, 0xff)
	if !bytes.Equal(cid, []byte{0xaa, 0x7f, 1, 2, 1, 2, 3, 4}) {
		t.Errorf("got %x", cid)
	}
	// NewCID's low bits are random: over many CIDs, more than one value.
	lows := map[byte]bool{}
	for range 64 {
		cid, _ := e.NewCID()
		lows[cid[0]&0x1f] = true
		if cid[0]>>5 != 3 {
			t.Fatalf("rotation of %x", cid)
		}
	}
	if len(lows) < 2 {
		t.Errorf("first-octet low bits never change: %v", lows)
	}
}

func TestAppendUnroutable(t *testing.T) {
	d, _ := NewDecoder(Config{Rotation: 0, ServerIDLen: 2, NonceLen: 4})
	for n := MinUnroutableLen; n <= MaxUnroutableLen; n++ {
		cid, err := AppendUnroutable(nil, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(cid) != n || cid[0] != 0xe0|byte(n-1) {
			t.Fatalf("%d: %x", n, cid)
		}
		if r := d.Decode(cid); r.Status != Reserved || r.Rotation != 7 {
			t.Fatalf("%x: %+v", cid, r)
		}
	}
	for _, n := range []int{0, 7, 21} {
		if _, err := AppendUnroutable(nil, n); err == nil {
			t.Errorf("length %d accepted", n)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Plaintext.String(), "plaintext"}, {SinglePass.String(), "single-pass"},
		{FourPass.String(), "four-pass"}, {Algorithm(9).String(), "Algorithm(9)"},
		{Routable.String(), "routable"}, {Reserved.String(), "reserved"},
		{NoConfig.String(), "no-config"}, {TooShort.String(), "too-short"},
		{BadLength.String(), "bad-length"}, {Status(9).String(), "Status(9)"},
	} {
		if tc.got != tc.want {
			t.Errorf("%q; want %q", tc.got, tc.want)
		}
	}
}

// TestDecodeAllocs: Decode allocates nothing, for every algorithm.
func TestDecodeAllocs(t *testing.T) {
	for _, v := range vectors {
		d, _ := NewDecoder(v.config(t))
		cid := unhex(t, v.cid)
		if n := testing.AllocsPerRun(1000, func() { _ = d.Decode(cid) }); n != 0 {
			t.Errorf("%s: %v allocations per Decode", v.name, n)
		}
	}
}
