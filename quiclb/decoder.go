package quiclb

import (
	"fmt"
	"strconv"
)

// Status says whether a connection ID is routable, and if not, why. Every
// status but Routable makes the connection ID an "unroutable DCID" of the
// draft, which the load balancer routes with its fallback algorithm.
type Status uint8

// The outcomes of Decoder.Decode.
const (
	// Routable: the connection ID decodes to a server ID.
	Routable Status = iota
	// Reserved: the config rotation bits are 0b111, which a server with no
	// configuration uses; such a connection ID is never routable.
	Reserved
	// NoConfig: no configuration of the Decoder has the connection ID's
	// config rotation codepoint.
	NoConfig
	// TooShort: the connection ID is shorter than its configuration's, or
	// empty.
	TooShort
	// BadLength: the configuration self-encodes lengths, and the first
	// octet's five low bits do not give the connection ID's length less
	// one.
	BadLength
)

// String returns the status as a word: "routable", "reserved",
// "no-config", "too-short" or "bad-length".
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

var statusNames = [...]string{"routable", "reserved", "no-config", "too-short", "bad-length"}

// Result is what a Decoder makes of one connection ID.
type Result struct {
	// ServerID is the server ID the connection ID encodes when Status is
	// Routable, and the zero ServerID otherwise.
	ServerID ServerID
	// Rotation is the config rotation codepoint of the connection ID's
	// first octet (0 to 7), when it has one.
	Rotation uint8
	// Status says whether the connection ID is routable.
	Status Status
}

// Routable reports whether r.Status is Routable.
func (r Result) Routable() bool { return r.Status == Routable }

// A Decoder extracts server IDs from connection IDs under up to seven
// configurations, one per config rotation codepoint, as a load balancer
// does. It is safe for concurrent use, and a nil *Decoder is a load
// balancer with no configuration: every connection ID is unroutable
// (NoConfig or Reserved).
type Decoder struct {
	codecs [MaxRotation + 1]*codec
}

// NewDecoder returns a Decoder for the given configurations, each with its
// own config rotation codepoint. It fails if one is not valid or two share
// a codepoint. It copies the keys.
func NewDecoder(configs ...Config) (*Decoder, error) {
	d := new(Decoder)
	for i, c := range configs {
		k, err := newCodec(c)
		if err != nil {
			return nil, fmt.Errorf("configuration %d: %w", i, err)
		}
		if d.codecs[c.Rotation] != nil {
			return nil, fmt.Errorf("quiclb: configurations %d and %d both have config rotation %d", d.index(configs, c.Rotation), i, c.Rotation)
		}
		d.codecs[c.Rotation] = k
	}
	return d, nil
}

func (d *Decoder) index(configs []Config, rot uint8) int {
	for i, c := range configs {
		if c.Rotation == rot {
			return i
		}
	}
	return -1
}

// Config returns the configuration with config rotation codepoint rot, if
// the Decoder has one.
func (d *Decoder) Config(rot uint8) (Config, bool) {
	if d == nil || rot > MaxRotation || d.codecs[rot] == nil {
		return Config{}, false
	}
	c := d.codecs[rot].cfg
	if c.Key != nil {
		c.Key = append([]byte(nil), c.Key...)
	}
	return c, true
}

// CIDLen returns the length of the connection IDs of the configuration
// that a connection ID starting with first belongs to, if the Decoder has
// that configuration. A load balancer that knows its servers' connection
// ID lengths only from their configurations reads short headers with it.
func (d *Decoder) CIDLen(first byte) (int, bool) {
	rot := first >> 5
	if d == nil || rot > MaxRotation || d.codecs[rot] == nil {
		return 0, false
	}
	return d.codecs[rot].cfg.CIDLen(), true
}

// Decode returns the server ID that cid encodes, or why it encodes none.
// cid may be longer than its configuration's connection IDs (a server may
// append octets of its own, which Decode ignores), except that with
// length self-description its first octet must give its length less one.
// Decode does not allocate, and keeps no part of cid.
func (d *Decoder) Decode(cid []byte) Result {
	if len(cid) == 0 {
		return Result{Status: TooShort}
	}
	rot := cid[0] >> 5
	if rot == Unroutable {
		return Result{Rotation: rot, Status: Reserved}
	}
	if d == nil || d.codecs[rot] == nil {
		return Result{Rotation: rot, Status: NoConfig}
	}
	k := d.codecs[rot]
	if len(cid) < 1+k.plen {
		return Result{Rotation: rot, Status: TooShort}
	}
	if k.cfg.EncodeLength && int(cid[0]&0x1f) != len(cid)-1 {
		return Result{Rotation: rot, Status: BadLength}
	}
	return Result{ServerID: k.serverID(cid), Rotation: rot, Status: Routable}
}
