package check

import (
	"bytes"
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

// testKey is a static key with every byte distinct within each part, so
// that a probe that takes the wrong part fails.
func testKey() StaticKey {
	var k StaticKey
	for i := range k {
		k[i] = byte(i*7 + 3)
	}
	return k
}

// ovpnServerReset is a server's hard reset answering session ID sid, with
// acks acknowledged packet-ids and extra after the message packet-id.
func ovpnServerReset(sid []byte, acks int, extra ...byte) []byte {
	p := []byte{ovpnResetServer, 1, 2, 3, 4, 5, 6, 7, 8, byte(acks)}
	for i := range acks {
		p = binary.BigEndian.AppendUint32(p, uint32(i))
	}
	if acks > 0 {
		p = append(p, sid...)
	}
	p = append(p, 0, 0, 0, 0)
	return append(p, extra...)
}

// serverWrap is the server's side of a probe's wrap: what a server with
// the same key and the opposite direction seals.
func serverWrap(t *testing.T, cfg OpenVPNConfig) ovpnWrap {
	t.Helper()
	switch cfg.Wrap {
	case "tls-auth":
		switch cfg.Direction {
		case KeyInverse:
			cfg.Direction = KeyNormal
		case KeyNormal:
			cfg.Direction = KeyInverse
		}
		p, err := NewOpenVPN(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return p.(openVPN).wrap
	case "tls-crypt":
		p, err := NewOpenVPN(cfg)
		if err != nil {
			t.Fatal(err)
		}
		w := p.(openVPN).wrap.(*tlsCrypt)
		return &tlsCrypt{outHMAC: w.inHMAC, inHMAC: w.outHMAC, outCipher: w.inCipher, inCipher: w.outCipher}
	}
	return plain{}
}

// ovpnCase is a server's answer to an OpenVPN probe and whether Check
// must take it.
type ovpnCase struct {
	name string
	cfg  OpenVPNConfig
	// reply makes the server's answer to the request's session ID.
	reply func(t *testing.T, sid []byte) []byte
	ok    bool
}

func TestOpenVPNProbe(t *testing.T) {
	other := testKey()
	other[70] ^= 1 // the HMAC keys of both directions, within SHA1's 20 bytes
	other[200] ^= 1
	other[10] ^= 1 // and the cipher keys'
	other[140] ^= 1
	cases := []ovpnCase{
		{"plain", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte { return ovpnServerReset(sid, 1) }, true},
		{"plain, two acks and a payload", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte { return ovpnServerReset(sid, 2, 0x0f, 0, 2, 0) }, true},
		{"plain, another session ID", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte {
			return ovpnServerReset(append([]byte{sid[0] ^ 1}, sid[1:]...), 1)
		}, false},
		{"plain, no ack", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte { return ovpnServerReset(sid, 0) }, false},
		{"plain, cut short", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte { return ovpnServerReset(sid, 1)[:17] }, false},
		{"plain, client's opcode", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte {
			p := ovpnServerReset(sid, 1)
			p[0] = ovpnResetClient
			return p
		}, false},
		{"plain, key-id 1", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte {
			p := ovpnServerReset(sid, 1)
			p[0] |= 1
			return p
		}, false},
		{"plain, acknowledgement", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte {
			p := ovpnServerReset(sid, 1)
			p[0] = ovpnAck
			return p[:len(p)-4]
		}, true},
		{"empty", OpenVPNConfig{}, func(t *testing.T, sid []byte) []byte { return nil }, false},
	}
	for _, wrap := range []OpenVPNConfig{
		{Wrap: "tls-auth", Key: testKey(), Direction: KeyInverse},
		{Wrap: "tls-auth", Key: testKey(), Direction: KeyNormal, Digest: "SHA256"},
		{Wrap: "tls-auth", Key: testKey(), Direction: KeyBidirectional, Digest: "SHA512"},
		{Wrap: "tls-crypt", Key: testKey()},
	} {
		name := wrap.Wrap + " " + wrap.Digest
		cases = append(cases,
			ovpnCase{name, wrap, func(t *testing.T, sid []byte) []byte {
				p := ovpnServerReset(sid, 1)
				return serverWrap(t, wrap).seal(p[:ovpnHeader], p[ovpnHeader:], t0)
			}, true},
			ovpnCase{name + ", another key", wrap, func(t *testing.T, sid []byte) []byte {
				w := wrap
				w.Key = other
				p := ovpnServerReset(sid, 1)
				return serverWrap(t, w).seal(p[:ovpnHeader], p[ovpnHeader:], t0)
			}, false},
			ovpnCase{name + ", unwrapped", wrap, func(t *testing.T, sid []byte) []byte { return ovpnServerReset(sid, 1) }, false},
			ovpnCase{name + ", a bit flipped", wrap, func(t *testing.T, sid []byte) []byte {
				p := ovpnServerReset(sid, 1)
				p = serverWrap(t, wrap).seal(p[:ovpnHeader], p[ovpnHeader:], t0)
				p[len(p)-1] ^= 1
				return p
			}, false},
		)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewOpenVPN(c.cfg)
			a := startAttempt(t)(p, err)
			req := a.Request()
			if req[0] != ovpnResetClient {
				t.Fatalf("request opcode byte %#x", req[0])
			}
			sid := req[1:ovpnHeader]
			// The request is what the server's side opens: the client's
			// reset, acknowledging nothing.
			body, err := serverWrap(t, c.cfg).open(req)
			if err != nil || !bytes.Equal(body, []byte{0, 0, 0, 0, 0}) {
				t.Fatalf("the server's side opens the request to %x, %v", body, err)
			}
			err = a.Check(c.reply(t, sid))
			if (err == nil) != c.ok {
				t.Fatalf("Check: %v; want ok %v", err, c.ok)
			}
			if err != nil && !errors.Is(err, ErrNotAnswer) {
				t.Fatalf("Check: %v does not wrap ErrNotAnswer", err)
			}
			b, _ := p.Start(t0)
			if bytes.Equal(b.Request()[1:ovpnHeader], sid) {
				t.Fatal("two attempts with one session ID")
			}
		})
	}
}

func TestNewOpenVPNRefuses(t *testing.T) {
	for _, cfg := range []OpenVPNConfig{
		{Wrap: "tls-crypt-v2"},
		{Wrap: "tls-auth", Digest: "MD5"},
		{Wrap: "tls-auth", Direction: 7},
	} {
		if _, err := NewOpenVPN(cfg); err == nil {
			t.Errorf("NewOpenVPN(%+v) accepted", cfg)
		}
	}
}

func TestParseStaticKey(t *testing.T) {
	k := testKey()
	var hexLines strings.Builder
	for i := 0; i < len(k); i += 16 {
		for _, b := range k[i : i+16] {
			hexLines.WriteString(strings.ToLower(string("0123456789abcdef"[b>>4]) + string("0123456789abcdef"[b&15])))
		}
		hexLines.WriteString("\n")
	}
	good := "#\n# 2048 bit OpenVPN static key\n#\n" + staticBegin + "\n" + hexLines.String() + staticEnd + "\n"
	cases := []struct {
		name, text string
		ok         bool
	}{
		{"as openvpn writes it", good, true},
		{"CRLF", strings.ReplaceAll(good, "\n", "\r\n"), true},
		{"no block", "hello", false},
		{"END before BEGIN", staticEnd + "\n" + staticBegin, false},
		{"short", staticBegin + "\n00ff\n" + staticEnd, false},
		{"long", staticBegin + "\n" + hexLines.String() + "00\n" + staticEnd, false},
		{"not hex", strings.Replace(good, "03", "0g", 1), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseStaticKey([]byte(c.text))
			if (err == nil) != c.ok {
				t.Fatalf("err %v; want ok %v", err, c.ok)
			}
			if c.ok && got != k {
				t.Fatal("wrong key")
			}
		})
	}
}

func TestQUICProbe(t *testing.T) {
	vn := func(dcid, scid []byte, versions ...uint32) []byte {
		p := []byte{0x80 | 0x2a, 0, 0, 0, 0, byte(len(dcid))}
		p = append(p, dcid...)
		p = append(p, byte(len(scid)))
		p = append(p, scid...)
		for _, v := range versions {
			p = binary.BigEndian.AppendUint32(p, v)
		}
		return p
	}
	cases := []struct {
		name  string
		reply func(a *quicAttempt) []byte
		ok    bool
	}{
		{"version negotiation", func(a *quicAttempt) []byte { return vn(a.scid[:], a.dcid[:], 1, 0x6b3343cf) }, true},
		{"IDs not swapped", func(a *quicAttempt) []byte { return vn(a.dcid[:], a.scid[:], 1) }, false},
		{"other IDs", func(a *quicAttempt) []byte { return vn([]byte{1, 2, 3, 4, 5, 6, 7, 8}, a.dcid[:], 1) }, false},
		{"no versions", func(a *quicAttempt) []byte { return vn(a.scid[:], a.dcid[:]) }, false},
		{"own version listed", func(a *quicAttempt) []byte { return vn(a.scid[:], a.dcid[:], 1, a.version) }, false},
		{"versions cut", func(a *quicAttempt) []byte { return vn(a.scid[:], a.dcid[:], 1)[:26] }, false},
		{"short header", func(a *quicAttempt) []byte { p := vn(a.scid[:], a.dcid[:], 1); p[0] = 0x40; return p }, false},
		{"version 1", func(a *quicAttempt) []byte { p := vn(a.scid[:], a.dcid[:], 1); p[4] = 1; return p }, false},
		{"CID length past the end", func(a *quicAttempt) []byte { return []byte{0x80, 0, 0, 0, 0, 200, 1} }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			at, _ := QUIC{}.Start(t0)
			a := at.(*quicAttempt)
			req := a.Request()
			if len(req) != quicMinDatagram || req[0]&0xc0 != 0xc0 {
				t.Fatalf("request of %d bytes, first byte %#x", len(req), req[0])
			}
			if v := binary.BigEndian.Uint32(req[1:5]); v&0x0f0f0f0f != 0x0a0a0a0a {
				t.Fatalf("version %#x is not a reserved one", v)
			}
			err := a.Check(c.reply(a))
			if (err == nil) != c.ok {
				t.Fatalf("Check: %v; want ok %v", err, c.ok)
			}
		})
	}
}

func TestGenericProbe(t *testing.T) {
	cases := []struct {
		name  string
		cfg   GenericConfig
		reply func(req []byte) []byte
		ok    bool
	}{
		{"any answer", GenericConfig{Send: "ping"}, func([]byte) []byte { return []byte("x") }, true},
		{"prefix", GenericConfig{Send: "ping", Prefix: "pong"}, func([]byte) []byte { return []byte("pong 1") }, true},
		{"wrong prefix", GenericConfig{Send: "ping", Prefix: "pong"}, func([]byte) []byte { return []byte("pang") }, false},
		{"regexp", GenericConfig{Send: "ping", Regexp: `^ok \d+$`}, func([]byte) []byte { return []byte("ok 42") }, true},
		{"regexp mismatch", GenericConfig{Send: "ping", Regexp: `^ok \d+$`}, func([]byte) []byte { return []byte("ok x") }, false},
		{"echoed nonce", GenericConfig{Send: "hello {nonce}", Prefix: "hello {nonce}"}, func(req []byte) []byte { return req }, true},
		{"other nonce", GenericConfig{Send: "hello {nonce}", Prefix: "hello {nonce}"}, func([]byte) []byte { return []byte("hello 0123456789abcdef") }, false},
		{"nonce in regexp", GenericConfig{Send: "{nonce}", Regexp: "^OK {nonce}$"}, func(req []byte) []byte { return append([]byte("OK "), req...) }, true},
		{"other nonce in regexp", GenericConfig{Send: "{nonce}", Regexp: "^OK {nonce}$"}, func([]byte) []byte { return []byte("OK 0123456789abcdef") }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := startAttempt(t)(NewGeneric(c.cfg))
			if strings.Contains(string(a.Request()), Nonce) {
				t.Fatalf("request %q still names the nonce", a.Request())
			}
			if err := a.Check(c.reply(a.Request())); (err == nil) != c.ok {
				t.Fatalf("Check: %v; want ok %v", err, c.ok)
			}
		})
	}
	for _, cfg := range []GenericConfig{{}, {Send: "x", Regexp: "("}} {
		if _, err := NewGeneric(cfg); err == nil {
			t.Errorf("NewGeneric(%+v) accepted", cfg)
		}
	}
}

// wgPair returns a fresh key pair.
func wgPair(t *testing.T) (priv, pub [32]byte) {
	k, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	copy(priv[:], k.Bytes())
	copy(pub[:], k.PublicKey().Bytes())
	return priv, pub
}

// wgPairSeed returns a fixed key pair for seed, for fuzz targets.
func wgPairSeed(seed byte) (priv, pub [32]byte) {
	for i := range priv {
		priv[i] = seed + byte(i)
	}
	k, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		panic(err)
	}
	copy(pub[:], k.PublicKey().Bytes())
	return priv, pub
}

// startAttempt returns a function that starts an attempt at t0 of the
// probe a constructor returned, failing t if either failed:
// startAttempt(t)(NewGeneric(cfg)).
func startAttempt(t *testing.T) func(Probe, error) Attempt {
	return func(p Probe, err error) Attempt {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.Start(t0)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}
