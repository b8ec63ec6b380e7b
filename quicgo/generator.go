package quicgo

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/quic-go/quic-go"

	"github.com/udpmux/udpmux/quiclb"
)

// Generator is a quic.ConnectionIDGenerator that makes QUIC-LB connection
// IDs for one server: set it as quic.Transport.ConnectionIDGenerator, and
// every connection ID the transport issues (the SCID of its long headers,
// and those of its NEW_CONNECTION_ID frames) encodes the server's ID. It
// is safe for concurrent use.
//
// quic-go does not check that a generated connection ID is new: a repeat
// would be handed to the connection that has it already. So under an
// encrypted configuration the Generator's nonces are a counter from a
// random start, as the draft recommends ("Connection ID Entropy"), which
// repeats only after 2^(8·NonceLen) connection IDs (2^64 for nonces of 8
// octets or more); encryption hides the counter. Under the plaintext
// configuration a counter would let anyone link a server's connections,
// which the draft forbids, so nonces are random there and repeat by the
// birthday bound (see quiclb.Encoder.NewCID): use long nonces with it.
type Generator struct {
	enc      *quiclb.Encoder
	nonceLen int
	counter  bool
	next     atomic.Uint64
	high     [quiclb.MaxNonceLen]byte // the random octets above the counter
}

// NewGenerator returns a Generator for the server with ID id under the
// QUIC-LB configuration c. It fails if c is not valid or id does not fit
// it.
func NewGenerator(c quiclb.Config, id quiclb.ServerID) (*Generator, error) {
	enc, err := quiclb.NewEncoder(c, id)
	if err != nil {
		return nil, err
	}
	g := &Generator{enc: enc, nonceLen: c.NonceLen, counter: c.Key != nil}
	var start [8]byte
	if _, err := rand.Read(start[:]); err != nil {
		return nil, fmt.Errorf("quicgo: reading random nonce start: %w", err)
	}
	if _, err := rand.Read(g.high[:]); err != nil {
		return nil, fmt.Errorf("quicgo: reading random nonce start: %w", err)
	}
	g.next.Store(binary.BigEndian.Uint64(start[:]))
	return g, nil
}

// GenerateConnectionID returns a new connection ID of the server.
func (g *Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	var buf [quiclb.MaxCIDLen]byte
	var cid []byte
	var err error
	if g.counter {
		n := g.nonceLen
		var nonce [quiclb.MaxNonceLen + 8]byte
		copy(nonce[:], g.high[:])
		// The counter is the nonce's last 8 octets, or all of a shorter
		// nonce (then it wraps at 2^(8·n)).
		binary.BigEndian.PutUint64(nonce[max(n, 8)-8:], g.next.Add(1))
		var low [1]byte
		if _, err := rand.Read(low[:]); err != nil {
			return quic.ConnectionID{}, err
		}
		cid, err = g.enc.EncodeNonce(buf[:0], nonce[max(n, 8)-n:max(n, 8)], low[0])
	} else {
		cid, err = g.enc.Append(buf[:0])
	}
	if err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(cid), nil
}

// ConnectionIDLen returns the length of the configuration's connection
// IDs, 6 to 20 octets.
func (g *Generator) ConnectionIDLen() int { return g.enc.CIDLen() }

// Encoder returns the Generator's encoder, for its configuration and
// server ID.
func (g *Generator) Encoder() *quiclb.Encoder { return g.enc }

var _ quic.ConnectionIDGenerator = (*Generator)(nil)
