package check

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
	"sync/atomic"
	"time"
)

// OpenVPN opcodes (the high five bits of the first byte) the probe uses;
// its packets have key-id 0.
const (
	ovpnResetClient = 7 << 3 // P_CONTROL_HARD_RESET_CLIENT_V2
	ovpnResetServer = 8 << 3 // P_CONTROL_HARD_RESET_SERVER_V2
	ovpnAck         = 5 << 3 // P_ACK_V1
	ovpnSIDSize     = 8
	ovpnHeader      = 1 + ovpnSIDSize // opcode and session ID
	ovpnPIDTime     = 8               // tls-auth's and tls-crypt's packet-id and time
	ovpnCryptTag    = 32              // tls-crypt's HMAC-SHA256 tag
)

// KeyDirection is tls-auth's key direction (OpenVPN's key-direction):
// which of a static key's two keys signs what a side sends.
type KeyDirection int8

// The key directions. A server configured with `tls-auth ta.key 0` has
// clients, and so the probe, use KeyInverse (key-direction 1); a server
// with `tls-auth ta.key` and no direction uses one key both ways.
const (
	KeyBidirectional KeyDirection = iota
	KeyNormal                     // key-direction 0
	KeyInverse                    // key-direction 1
)

// keys returns the indexes of the keys that sign what the probe sends and
// what it receives.
func (d KeyDirection) keys() (out, in int) {
	switch d {
	case KeyNormal:
		return 0, 1
	case KeyInverse:
		return 1, 0
	}
	return 0, 0
}

// OpenVPNConfig configures an OpenVPN probe.
type OpenVPNConfig struct {
	// Wrap is the servers' control channel protection: "" for none,
	// "tls-auth" or "tls-crypt" (tls-crypt-v2 servers cannot be probed).
	Wrap string
	// Key is the servers' tls-auth or tls-crypt key.
	Key StaticKey
	// Direction is tls-auth's key direction as the servers' clients have
	// it (tls-crypt has none: a client always uses the inverse).
	Direction KeyDirection
	// Digest is tls-auth's HMAC, the servers' --auth: "SHA1" (""; OpenVPN's
	// default), "SHA256" or "SHA512".
	Digest string
}

// openVPN is an OpenVPN probe.
type openVPN struct {
	wrap ovpnWrap
}

// ovpnWrap protects a control packet's body (all after the opcode and
// session ID) as the server expects, and removes the server's protection.
type ovpnWrap interface {
	// seal returns the packet of hdr and body, protected, at now.
	seal(hdr, body []byte, now time.Time) []byte
	// open returns the body of the server's packet p, whose header has
	// been checked, or why p is not the server's.
	open(p []byte) ([]byte, error)
}

// NewOpenVPN returns a probe for OpenVPN servers in TLS mode.
func NewOpenVPN(cfg OpenVPNConfig) (Probe, error) {
	switch cfg.Wrap {
	case "":
		return openVPN{plain{}}, nil
	case "tls-auth":
		var h func() hash.Hash
		switch cfg.Digest {
		case "", "SHA1":
			h = sha1.New
		case "SHA256":
			h = sha256.New
		case "SHA512":
			h = sha512.New
		default:
			return nil, fmt.Errorf("check: tls-auth digest %q is not one of SHA1, SHA256, SHA512", cfg.Digest)
		}
		if cfg.Direction < KeyBidirectional || cfg.Direction > KeyInverse {
			return nil, fmt.Errorf("check: tls-auth key direction %d is not 0, 1 or bidirectional", cfg.Direction)
		}
		out, in := cfg.Direction.keys()
		size := h().Size()
		return openVPN{&tlsAuth{hash: h, out: cfg.Key.hmacKey(out)[:size], in: cfg.Key.hmacKey(in)[:size]}}, nil
	case "tls-crypt":
		// A client encrypts with the second key and decrypts the server's
		// packets with the first (OpenVPN's KEY_DIRECTION_INVERSE).
		w := &tlsCrypt{outHMAC: cfg.Key.hmacKey(1)[:32], inHMAC: cfg.Key.hmacKey(0)[:32]}
		var err error
		if w.outCipher, err = aes.NewCipher(cfg.Key.cipherKey(1)[:32]); err != nil {
			return nil, err
		}
		if w.inCipher, err = aes.NewCipher(cfg.Key.cipherKey(0)[:32]); err != nil {
			return nil, err
		}
		return openVPN{w}, nil
	}
	return nil, fmt.Errorf("check: OpenVPN wrap %q is not one of tls-auth, tls-crypt (or none)", cfg.Wrap)
}

// ovpnAttempt is one OpenVPN probe: its session ID.
type ovpnAttempt struct {
	wrap ovpnWrap
	sid  [ovpnSIDSize]byte
	req  []byte
}

// Start makes a hard reset with a fresh random session ID that
// acknowledges nothing, message packet-id 0 and no payload, as a client's
// first packet.
func (o openVPN) Start(now time.Time) (Attempt, error) {
	a := &ovpnAttempt{wrap: o.wrap}
	random(a.sid[:])
	hdr := append([]byte{ovpnResetClient}, a.sid[:]...)
	body := []byte{0, 0, 0, 0, 0} // no acks; message packet-id 0
	a.req = o.wrap.seal(hdr, body, now)
	return a, nil
}

func (a *ovpnAttempt) Request() []byte { return a.req }

// Check accepts the server's hard reset whose acknowledgements name the
// attempt's session ID, or a bare acknowledgement that does (what a
// point-to-point server, busy with another peer, answers); with tls-auth
// or tls-crypt, only one the server's key authenticates.
func (a *ovpnAttempt) Check(p []byte) error {
	if len(p) < ovpnHeader {
		return notAnswer("OpenVPN: too short")
	}
	if p[0] != ovpnResetServer && p[0] != ovpnAck {
		return notAnswer(fmt.Sprintf("OpenVPN: opcode %d key-id %d, not a P_CONTROL_HARD_RESET_SERVER_V2 or P_ACK_V1 with key-id 0", p[0]>>3, p[0]&7))
	}
	body, err := a.wrap.open(p)
	if err != nil {
		return err
	}
	// ack count, acknowledged packet-ids, the acknowledged session ID.
	if len(body) < 1 {
		return notAnswer("OpenVPN: no acknowledgement")
	}
	n := int(body[0])
	if n == 0 {
		return notAnswer("OpenVPN: acknowledges nothing")
	}
	if len(body) < 1+4*n+ovpnSIDSize {
		return notAnswer("OpenVPN: acknowledgement cut short")
	}
	if !bytes.Equal(body[1+4*n:1+4*n+ovpnSIDSize], a.sid[:]) {
		return notAnswer("OpenVPN: acknowledges another session ID")
	}
	return nil
}

// packetID numbers the probe's control packets for tls-auth and
// tls-crypt, whose replay protection refuses a packet-id and time that the
// server has seen: a server that keeps one replay window for every client
// (point-to-point) would refuse a second probe within the same second
// with the same packet-id.
type packetID struct{ n atomic.Uint32 }

// next returns the next packet-id, from 1 (OpenVPN's first) on, skipping
// 0 when the counter wraps.
func (p *packetID) next() uint32 {
	for {
		if n := p.n.Add(1); n != 0 {
			return n
		}
	}
}

// plain is no protection.
type plain struct{}

func (plain) seal(hdr, body []byte, _ time.Time) []byte {
	return append(append([]byte(nil), hdr...), body...)
}
func (plain) open(p []byte) ([]byte, error) { return p[ovpnHeader:], nil }

// tlsAuth signs every control packet with an HMAC under the static key's
// HMAC key of each direction. On the wire: opcode, session ID, HMAC,
// packet-id, time, body; the HMAC covers packet-id, time, opcode, session
// ID and body, in that order (OpenVPN's swap_hmac).
type tlsAuth struct {
	hash    func() hash.Hash
	out, in []byte
	pid     packetID
}

func (w *tlsAuth) seal(hdr, body []byte, now time.Time) []byte {
	var pid [ovpnPIDTime]byte
	binary.BigEndian.PutUint32(pid[:4], w.pid.next())
	binary.BigEndian.PutUint32(pid[4:], uint32(now.Unix()))
	m := hmac.New(w.hash, w.out)
	m.Write(pid[:])
	m.Write(hdr)
	m.Write(body)
	p := append(append([]byte(nil), hdr...), m.Sum(nil)...)
	p = append(p, pid[:]...)
	return append(p, body...)
}

func (w *tlsAuth) open(p []byte) ([]byte, error) {
	size := len(w.in)
	if len(p) < ovpnHeader+size+ovpnPIDTime {
		return nil, notAnswer("OpenVPN tls-auth: too short")
	}
	tag := p[ovpnHeader : ovpnHeader+size]
	rest := p[ovpnHeader+size:]
	m := hmac.New(w.hash, w.in)
	m.Write(rest[:ovpnPIDTime])
	m.Write(p[:ovpnHeader])
	m.Write(rest[ovpnPIDTime:])
	if !hmac.Equal(m.Sum(nil), tag) {
		return nil, notAnswer("OpenVPN tls-auth: HMAC does not match the key")
	}
	return rest[ovpnPIDTime:], nil
}

// tlsCrypt encrypts and authenticates every control packet (OpenVPN's
// tls_crypt_wrap): opcode, session ID, packet-id, time, then a tag, the
// HMAC-SHA256 of those and the plain body, then the body encrypted with
// AES-256-CTR from the tag's first 16 bytes.
type tlsCrypt struct {
	outHMAC, inHMAC     []byte
	outCipher, inCipher cipher.Block
	pid                 packetID
}

func (w *tlsCrypt) seal(hdr, body []byte, now time.Time) []byte {
	p := binary.BigEndian.AppendUint32(append([]byte(nil), hdr...), w.pid.next())
	p = binary.BigEndian.AppendUint32(p, uint32(now.Unix()))
	m := hmac.New(sha256.New, w.outHMAC)
	m.Write(p)
	m.Write(body)
	tag := m.Sum(nil)
	p = append(p, tag...)
	enc := make([]byte, len(body))
	cipher.NewCTR(w.outCipher, tag[:aes.BlockSize]).XORKeyStream(enc, body)
	return append(p, enc...)
}

func (w *tlsCrypt) open(p []byte) ([]byte, error) {
	const head = ovpnHeader + ovpnPIDTime
	if len(p) < head+ovpnCryptTag {
		return nil, notAnswer("OpenVPN tls-crypt: too short")
	}
	tag := p[head : head+ovpnCryptTag]
	body := make([]byte, len(p)-head-ovpnCryptTag)
	cipher.NewCTR(w.inCipher, tag[:aes.BlockSize]).XORKeyStream(body, p[head+ovpnCryptTag:])
	m := hmac.New(sha256.New, w.inHMAC)
	m.Write(p[:head])
	m.Write(body)
	if !hmac.Equal(m.Sum(nil), tag) {
		return nil, notAnswer("OpenVPN tls-crypt: tag does not match the key")
	}
	return body, nil
}
