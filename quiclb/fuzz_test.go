package quiclb

import (
	"bytes"
	"testing"
)

// fuzzDecoder has one configuration of each algorithm, at rotations 0 to
// 3; 4 to 6 have none.
func fuzzDecoder(t testing.TB) (*Decoder, []Config) {
	key := unhex(t, draftKey)
	cs := []Config{
		{Rotation: 0, ServerIDLen: 2, NonceLen: 6},
		{Rotation: 1, ServerIDLen: 3, NonceLen: 4, Key: key, EncodeLength: true},
		{Rotation: 2, ServerIDLen: 8, NonceLen: 8, Key: key},
		{Rotation: 3, ServerIDLen: 10, NonceLen: 5, Key: key, EncodeLength: true},
	}
	d, err := NewDecoder(cs...)
	if err != nil {
		t.Fatal(err)
	}
	return d, cs
}

// FuzzDecode: Decode never panics, never changes its input, and returns a
// server ID of its configuration's length exactly when it says Routable.
func FuzzDecode(f *testing.F) {
	for _, v := range vectors {
		f.Add(unhex(f, v.cid))
	}
	for _, s := range []string{"", "00", "e0", "ff0102030405060708", "2011223344556677", "c0112233445566"} {
		f.Add(unhex(f, s))
	}
	d, cs := fuzzDecoder(f)
	f.Fuzz(func(t *testing.T, cid []byte) {
		orig := bytes.Clone(cid)
		r := d.Decode(cid)
		if !bytes.Equal(cid, orig) {
			t.Fatal("Decode changed its input")
		}
		if len(cid) > 0 && r.Rotation != cid[0]>>5 {
			t.Fatalf("rotation %d of %x", r.Rotation, cid)
		}
		switch r.Status {
		case Routable:
			c := cs[r.Rotation]
			if r.ServerID.Len() != c.ServerIDLen || len(cid) < c.CIDLen() {
				t.Fatalf("%x: %+v under %v", cid, r, c)
			}
			// Decoding is a function of the CID's first CIDLen octets
			// (and, with self-encoded lengths, of its length).
			if !c.EncodeLength {
				if r2 := d.Decode(cid[:c.CIDLen()]); r2 != r {
					t.Fatalf("%x: %+v; its prefix: %+v", cid, r, r2)
				}
			}
		case Reserved:
			if len(cid) == 0 || cid[0]>>5 != 7 {
				t.Fatalf("%x: reserved", cid)
			}
		case NoConfig:
			if len(cid) == 0 || cid[0]>>5 < 4 || cid[0]>>5 == 7 {
				t.Fatalf("%x: no config", cid)
			}
		case TooShort, BadLength:
		default:
			t.Fatalf("%x: status %v", cid, r.Status)
		}
		if r.Status != Routable && r.ServerID != (ServerID{}) {
			t.Fatalf("%x: %v with server ID %v", cid, r.Status, r.ServerID)
		}
	})
}

// FuzzRoundTrip: for any configuration, server ID and nonce, the encoded
// CID decodes to the server ID.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(0), uint8(3), uint8(4), true, true, []byte("server id and nonce!"), byte(0))
	f.Add(uint8(2), uint8(8), uint8(8), true, false, []byte("0123456789abcdef0123"), byte(0x1f))
	f.Add(uint8(6), uint8(15), uint8(4), false, true, []byte("0123456789abcdef0123"), byte(7))
	f.Add(uint8(1), uint8(10), uint8(5), true, true, []byte("0123456789abcdef0123"), byte(3))
	key := unhex(f, draftKey)
	f.Fuzz(func(t *testing.T, rot, sidLen, nonceLen uint8, encrypt, encLen bool, material []byte, low byte) {
		c := Config{Rotation: rot % 7, ServerIDLen: int(sidLen%15) + 1, NonceLen: int(nonceLen%15) + 4, EncodeLength: encLen}
		if c.ServerIDLen+c.NonceLen > MaxPlaintextLen {
			c.NonceLen = MaxPlaintextLen - c.ServerIDLen
		}
		if c.NonceLen < MinNonceLen {
			return
		}
		if encrypt {
			c.Key = key
		}
		if len(material) < c.ServerIDLen+c.NonceLen {
			return
		}
		sid, err := ServerIDFromBytes(material[:c.ServerIDLen])
		if err != nil {
			t.Fatal(err)
		}
		e, err := NewEncoder(c, sid)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		d, err := NewDecoder(c)
		if err != nil {
			t.Fatal(err)
		}
		cid, err := e.EncodeNonce(nil, material[c.ServerIDLen:c.ServerIDLen+c.NonceLen], low)
		if err != nil {
			t.Fatal(err)
		}
		if len(cid) != c.CIDLen() {
			t.Fatalf("%v: %x", c, cid)
		}
		if r := d.Decode(cid); r.Status != Routable || r.ServerID != sid || r.Rotation != c.Rotation {
			t.Fatalf("%v: %x decodes to %+v; want %v", c, cid, r, sid)
		}
	})
}
