package quiclb

import (
	"crypto/rand"
	"fmt"
)

// An Encoder makes the connection IDs of one server under one
// configuration. It is safe for concurrent use.
type Encoder struct {
	k  *codec
	id ServerID
}

// NewEncoder returns an Encoder for the server with ID id under c. It
// fails if c is not valid or id is not c.ServerIDLen octets long. It
// copies c.Key.
func NewEncoder(c Config, id ServerID) (*Encoder, error) {
	k, err := newCodec(c)
	if err != nil {
		return nil, err
	}
	if id.Len() != c.ServerIDLen {
		return nil, fmt.Errorf("quiclb: server ID %s has %d octets; the configuration's server IDs have %d", id, id.Len(), c.ServerIDLen)
	}
	return &Encoder{k: k, id: id}, nil
}

// Config returns the Encoder's configuration (with a copy of its key).
func (e *Encoder) Config() Config {
	c := e.k.cfg
	if c.Key != nil {
		c.Key = append([]byte(nil), c.Key...)
	}
	return c
}

// ServerID returns the server ID the Encoder encodes.
func (e *Encoder) ServerID() ServerID { return e.id }

// CIDLen returns the length of the Encoder's connection IDs.
func (e *Encoder) CIDLen() int { return e.k.cfg.CIDLen() }

// NewCID returns a new connection ID: the first octet, then the server ID
// and a nonce from crypto/rand, encrypted if the configuration has a key.
// Without length self-description the five low bits of the first octet are
// random too.
//
// Nonces are random, so two connection IDs of one server collide with the
// probability of a birthday collision among NonceLen octets: after about
// 2^(4·NonceLen) connection IDs (65 536 with the minimum of 4 octets) a
// repeat is likely. A configuration for a busy server needs a longer nonce
// (8 octets: about 4·10⁹), or a fresh key before then.
func (e *Encoder) NewCID() ([]byte, error) {
	return e.Append(make([]byte, 0, e.CIDLen()))
}

// Append appends a new connection ID, as NewCID makes it, to dst and
// returns the extended slice.
func (e *Encoder) Append(dst []byte) ([]byte, error) {
	var rnd [1 + MaxNonceLen]byte
	r := rnd[:1+e.k.cfg.NonceLen]
	if _, err := rand.Read(r); err != nil {
		return dst, fmt.Errorf("quiclb: reading random nonce: %w", err)
	}
	return e.EncodeNonce(dst, r[1:], r[0])
}

// EncodeNonce appends the connection ID with the given nonce to dst and
// returns the extended slice; without length self-description the first
// octet's five low bits are the low bits of random5. It is deterministic,
// for tests and for servers that choose their nonces themselves (the
// draft's alternative: a counter from a random start, which never repeats
// a nonce until it wraps). It fails if nonce is not NonceLen octets.
//
// A nonce must never repeat under one configuration and key: the
// connection ID would repeat too.
func (e *Encoder) EncodeNonce(dst, nonce []byte, random5 byte) ([]byte, error) {
	c := e.k.cfg
	if len(nonce) != c.NonceLen {
		return dst, fmt.Errorf("quiclb: nonce of %d octets; the configuration's nonces have %d", len(nonce), c.NonceLen)
	}
	n := c.CIDLen()
	var cid [MaxCIDLen]byte
	cid[0] = e.k.firstOctet(n, random5)
	copy(cid[1:], e.id.b[:e.id.n])
	copy(cid[1+c.ServerIDLen:], nonce)
	if e.k.alg != Plaintext {
		s := new(scratch) // an Encoder allocates its result anyway
		e.k.encrypt(s, cid[1:], cid[1:])
	}
	return append(dst, cid[:n]...), nil
}

// Minimum and maximum length of unroutable connection IDs: the draft asks
// for at least 8 octets, 7 of them random.
const (
	MinUnroutableLen = 8
	MaxUnroutableLen = MaxCIDLen
)

// AppendUnroutable appends to dst a new unroutable connection ID of n
// octets, MinUnroutableLen to MaxUnroutableLen, and returns the extended
// slice: the first octet has config rotation 0b111 and the self-encoded
// length n-1, as the draft requires of a server with no configuration;
// the rest is random. Such a server should give each connection exactly
// one connection ID and disable active migration (the draft's
// "Configuration Failover").
func AppendUnroutable(dst []byte, n int) ([]byte, error) {
	if n < MinUnroutableLen || n > MaxUnroutableLen {
		return dst, fmt.Errorf("quiclb: unroutable connection ID of %d octets is not %d..%d", n, MinUnroutableLen, MaxUnroutableLen)
	}
	var cid [MaxCIDLen]byte
	if _, err := rand.Read(cid[1:n]); err != nil {
		return dst, fmt.Errorf("quiclb: reading random octets: %w", err)
	}
	cid[0] = Unroutable<<5 | byte(n-1)
	return append(dst, cid[:n]...), nil
}
