package wireguard

import (
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/rate"
	"github.com/udpmux/udpmux/session"
)

// ClassIndex is the flowtable.IDKey class of a receiver index: the index a
// WireGuard peer chose for a handshake, as the 4 bytes on the wire.
const ClassIndex uint16 = 1

// DefaultDecryptRate is the number of initiations per second a Dissector
// decrypts when Config.DecryptRate is 0.
const DefaultDecryptRate = 2000

// Message types and sizes (WireGuard whitepaper, section 5.4).
const (
	typeInitiation = 1
	typeResponse   = 2
	typeCookie     = 3
	typeTransport  = 4

	sizeInitiation   = 148
	sizeResponse     = 92
	sizeCookie       = 64
	minSizeTransport = 32
)

// Config configures a Dissector.
type Config struct {
	// PrivateKey is the private key the backends share (Curve25519, as
	// `wg genkey` makes it, decoded; see LoadPrivateKey). With it, the
	// Dissector keys initiations by the initiator's static public key;
	// without it (nil), by 4-tuple. New copies the key.
	PrivateKey *[32]byte
	// DecryptRate bounds the initiations decrypted per second, over all
	// goroutines together, with bursts of up to a tenth of that; beyond it
	// initiations are keyed by 4-tuple. 0 means DefaultDecryptRate. It has
	// no effect without PrivateKey.
	DecryptRate int
}

// A Dissector maps WireGuard datagrams to flow keys (see the package
// documentation). It implements session.Tracker, and is safe for concurrent
// use: one Dissector serves every event loop at once.
type Dissector struct {
	priv  *ecdh.PrivateKey // nil: initiations are keyed by 4-tuple
	hs    handshake
	pool  sync.Pool // of *scratch
	limit rate.Limiter
	epoch time.Time
	clock func() int64 // nanoseconds since epoch; replaced by tests

	counts [numCounters]atomic.Uint64
}

// Counter indexes. Only initiations are counted, which are rare (one per
// client and two minutes): a counter on the path of every transport message,
// shared by the loops, would cost more than the rest of Dissect. The engine
// counts datagrams and drops per listener.
const (
	cInitiations = iota
	cStaticKeyed
	cMAC1Mismatches
	cDecryptFailures
	cRateLimited
	numCounters
)

// Stats are a Dissector's counters since New, for the initiations passed
// to Dissect (client to server).
type Stats struct {
	// Initiations counts well-formed initiations.
	Initiations uint64
	// StaticKeyed counts initiations keyed by the initiator's static key.
	StaticKeyed uint64
	// MAC1Mismatches counts initiations whose mac1 was not made for the
	// Dissector's public key, keyed by 4-tuple. Many of them while clients
	// connect mean that the configured private key is not the backends'.
	MAC1Mismatches uint64
	// DecryptFailures counts initiations with a correct mac1 whose static
	// key or timestamp did not decrypt, keyed by 4-tuple.
	DecryptFailures uint64
	// RateLimited counts initiations with a correct mac1 that were not
	// decrypted because of Config.DecryptRate, keyed by 4-tuple.
	RateLimited uint64
}

// New returns a Dissector configured by cfg.
func New(cfg Config) (*Dissector, error) {
	rate := cfg.DecryptRate
	if rate < 0 {
		return nil, errors.New("wireguard: negative DecryptRate")
	}
	if rate == 0 {
		rate = DefaultDecryptRate
	}
	d := &Dissector{epoch: time.Now()}
	d.clock = func() int64 { return int64(time.Since(d.epoch)) }
	d.limit.Init(rate)
	if cfg.PrivateKey != nil {
		priv, err := ecdh.X25519().NewPrivateKey(cfg.PrivateKey[:])
		if err != nil {
			return nil, errors.New("wireguard: " + err.Error())
		}
		d.priv = priv
		d.hs.init((*[32]byte)(priv.PublicKey().Bytes()))
		d.pool.New = func() any { return d.hs.newScratch() }
	}
	return d, nil
}

// header returns the type of a well-formed message, or 0: the first four
// bytes, read little-endian, are the type and three zero bytes.
func header(p []byte) byte {
	if len(p) < 4 {
		return 0
	}
	switch h := binary.LittleEndian.Uint32(p); h {
	case typeInitiation:
		if len(p) == sizeInitiation {
			return typeInitiation
		}
	case typeResponse:
		if len(p) == sizeResponse {
			return typeResponse
		}
	case typeCookie:
		if len(p) == sizeCookie {
			return typeCookie
		}
	case typeTransport:
		if len(p) >= minSizeTransport && (len(p)-minSizeTransport)%16 == 0 {
			return typeTransport
		}
	}
	return 0
}

// Dissect maps a datagram from a client (peer) to the server (local).
//
// An initiation gets the key of the initiator's static public key (its
// first 20 bytes, flowtable.CIDKey) when the Dissector has the private key
// and the initiation decrypts, and its 4-tuple key otherwise; either way
// its verdict is session.Create. A response, cookie reply or transport
// message gets its 4-tuple key, its receiver index as ID
// (flowtable.IDKey of class ClassIndex) and the verdict session.Lookup.
// Anything else gets session.Drop.
func (d *Dissector) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	var receiver []byte
	switch header(p) {
	case typeInitiation:
		d.counts[cInitiations].Add(1)
		if d.priv != nil {
			if k, ok := d.staticKey(p, scope); ok {
				return session.Dissection{Key: k, Verdict: session.Create}
			}
		}
		return session.Dissection{Key: flowtable.TupleKey(scope, local, peer), Verdict: session.Create}
	case typeResponse:
		receiver = p[8:12]
	case typeCookie, typeTransport:
		receiver = p[4:8]
	default:
		return session.Dissection{Verdict: session.Drop}
	}
	id, _ := flowtable.IDKey(scope, ClassIndex, receiver) // 4 bytes: never fails
	return session.Dissection{Key: flowtable.TupleKey(scope, local, peer), ID: id, Verdict: session.Lookup}
}

// staticKey returns the key of an initiation's static public key, counting
// why there is none when it fails.
func (d *Dissector) staticKey(p []byte, scope uint16) (flowtable.Key, bool) {
	s := d.pool.Get().(*scratch)
	defer d.pool.Put(s)
	if !s.checkMAC1(p) {
		d.counts[cMAC1Mismatches].Add(1)
		return flowtable.Key{}, false
	}
	if !d.limit.Allow(d.clock()) {
		d.counts[cRateLimited].Add(1)
		return flowtable.Key{}, false
	}
	static, ok := d.hs.open(d.priv, p, s)
	defer s.clear()
	if !ok {
		d.counts[cDecryptFailures].Add(1)
		return flowtable.Key{}, false
	}
	d.counts[cStaticKeyed].Add(1)
	k, _ := flowtable.CIDKey(scope, static[:flowtable.MaxCIDLen])
	return k, true
}

// Stats returns the Dissector's counters.
func (d *Dissector) Stats() Stats {
	return Stats{
		Initiations:     d.counts[cInitiations].Load(),
		StaticKeyed:     d.counts[cStaticKeyed].Load(),
		MAC1Mismatches:  d.counts[cMAC1Mismatches].Load(),
		DecryptFailures: d.counts[cDecryptFailures].Load(),
		RateLimited:     d.counts[cRateLimited].Load(),
	}
}
