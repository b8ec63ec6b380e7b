package quiclb

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits of a configuration (draft-ietf-quic-load-balancers, "Configuration
// Agent Actions"): QUIC versions 1 and 2 allow connection IDs of at most 20
// octets, the first octet is reserved, and the nonce must be long enough to
// keep connection IDs unique.
const (
	// MaxCIDLen is the longest connection ID of QUIC versions 1 and 2.
	MaxCIDLen = 20
	// MinServerIDLen and MaxServerIDLen bound Config.ServerIDLen.
	MinServerIDLen = 1
	MaxServerIDLen = 15
	// MinNonceLen and MaxNonceLen bound Config.NonceLen.
	MinNonceLen = 4
	MaxNonceLen = 18
	// MaxPlaintextLen bounds ServerIDLen + NonceLen: with the first octet
	// the connection ID is then at most MaxCIDLen octets.
	MaxPlaintextLen = MaxCIDLen - 1
	// KeyLen is the length of an AES-128 key.
	KeyLen = 16
)

// Config rotation codepoints: the three most significant bits of a
// connection ID's first octet.
const (
	// MaxRotation is the largest codepoint a configuration may use.
	MaxRotation = 6
	// Unroutable is the reserved codepoint 0b111 of connection IDs that
	// encode no server ID: a server without a configuration issues them,
	// and a load balancer never decodes them.
	Unroutable = 7
)

// Algorithm is one of the ways a configuration encodes server IDs.
type Algorithm uint8

// The algorithms of draft-ietf-quic-load-balancers. Which one a
// configuration uses follows from its key and lengths (Config.Algorithm).
const (
	// Plaintext: the server ID follows the first octet in clear. Anyone
	// who sees a connection ID can read the server it routes to.
	Plaintext Algorithm = iota + 1
	// SinglePass: server ID and nonce are exactly one AES block, encrypted
	// once with AES-128-ECB.
	SinglePass
	// FourPass: server ID and nonce are 5 to 19 octets other than 16,
	// encrypted with a four-round Feistel network whose round function is
	// AES-128-ECB.
	FourPass
)

// String returns the algorithm's name: "plaintext", "single-pass" or
// "four-pass".
func (a Algorithm) String() string {
	if a >= 1 && int(a) < len(algorithmNames)+1 {
		return algorithmNames[a-1]
	}
	return "Algorithm(" + strconv.Itoa(int(a)) + ")"
}

var algorithmNames = [...]string{"plaintext", "single-pass", "four-pass"}

// Config is one QUIC-LB configuration, as a configuration agent gives it to
// load balancers and servers: a config rotation codepoint, the lengths of
// the server ID and nonce, and optionally a key. The zero Config is not
// valid; see Validate.
type Config struct {
	// Rotation is the config rotation codepoint, 0 to MaxRotation, that
	// every connection ID of this configuration carries in the three most
	// significant bits of its first octet. Unroutable (7) is reserved.
	Rotation uint8
	// ServerIDLen is the length of a server ID in octets,
	// MinServerIDLen to MaxServerIDLen.
	ServerIDLen int
	// NonceLen is the length of the nonce in octets, MinNonceLen to
	// MaxNonceLen. ServerIDLen + NonceLen is at most MaxPlaintextLen.
	NonceLen int
	// Key, if not nil, is the 16-octet AES-128 key that encrypts server
	// IDs; nil selects the plaintext algorithm.
	Key []byte
	// EncodeLength makes servers write the connection ID's length, less
	// the first octet, into the five low bits of the first octet (length
	// self-description); otherwise those bits are random. A Decoder given
	// a configuration with EncodeLength checks those bits against the
	// length of the connection ID it decodes.
	EncodeLength bool
}

// Validate reports whether c is a configuration that Encoders and Decoders
// accept, and if not, what is wrong with it.
func (c Config) Validate() error {
	switch {
	case c.Rotation == Unroutable:
		return errors.New("quiclb: config rotation 7 (0b111) is reserved for unroutable connection IDs")
	case c.Rotation > MaxRotation:
		return fmt.Errorf("quiclb: config rotation %d is not in 0..%d", c.Rotation, MaxRotation)
	case c.ServerIDLen < MinServerIDLen || c.ServerIDLen > MaxServerIDLen:
		return fmt.Errorf("quiclb: server ID length %d is not in %d..%d", c.ServerIDLen, MinServerIDLen, MaxServerIDLen)
	case c.NonceLen < MinNonceLen || c.NonceLen > MaxNonceLen:
		return fmt.Errorf("quiclb: nonce length %d is not in %d..%d", c.NonceLen, MinNonceLen, MaxNonceLen)
	case c.ServerIDLen+c.NonceLen > MaxPlaintextLen:
		return fmt.Errorf("quiclb: server ID length %d and nonce length %d add up to %d, more than %d",
			c.ServerIDLen, c.NonceLen, c.ServerIDLen+c.NonceLen, MaxPlaintextLen)
	case c.Key != nil && len(c.Key) != KeyLen:
		return fmt.Errorf("quiclb: key of %d octets; AES-128 needs %d", len(c.Key), KeyLen)
	}
	return nil
}

// CIDLen returns the length of the connection IDs of c: the first octet,
// the server ID and the nonce.
func (c Config) CIDLen() int { return 1 + c.ServerIDLen + c.NonceLen }

// Algorithm returns the algorithm c's connection IDs are made with: the
// plaintext algorithm without a key, single-pass AES when server ID and
// nonce are 16 octets, and the four-pass Feistel network otherwise.
func (c Config) Algorithm() Algorithm {
	switch {
	case c.Key == nil:
		return Plaintext
	case c.ServerIDLen+c.NonceLen == 16:
		return SinglePass
	}
	return FourPass
}

// String returns c in the text form ParseConfig reads, with the key in
// hex: "rotation=0,server-id-len=2,nonce-len=6,key=00…ff,encode-length".
// The key is secret: whoever has it can read every server ID and link a
// server's connection IDs, so do not log the result.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rotation=%d,server-id-len=%d,nonce-len=%d", c.Rotation, c.ServerIDLen, c.NonceLen)
	if c.Key != nil {
		b.WriteString(",key=")
		b.WriteString(hex.EncodeToString(c.Key))
	}
	if c.EncodeLength {
		b.WriteString(",encode-length")
	}
	return b.String()
}

// MarshalText implements encoding.TextMarshaler with the form of String.
func (c Config) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseConfig.
func (c *Config) UnmarshalText(text []byte) error {
	n, err := ParseConfig(string(text))
	if err != nil {
		return err
	}
	*c = n
	return nil
}

// ParseConfig parses the text form of a configuration: comma-separated
// fields "rotation=N", "server-id-len=N", "nonce-len=N", optionally
// "key=HEX" (32 hex digits) and "encode-length", in any order. The first
// three are required. The result is validated.
func ParseConfig(s string) (Config, error) {
	var c Config
	var seen [3]bool
	for field := range strings.SplitSeq(s, ",") {
		field = strings.TrimSpace(field)
		name, value, hasValue := strings.Cut(field, "=")
		num := func(i int, max int) (int, error) {
			if seen[i] {
				return 0, fmt.Errorf("quiclb: %s given twice in %q", name, s)
			}
			seen[i] = true
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || n > max {
				return 0, fmt.Errorf("quiclb: %s=%q is not a number in 0..%d", name, value, max)
			}
			return n, nil
		}
		var err error
		var n int
		switch {
		case name == "rotation" && hasValue:
			n, err = num(0, 255)
			c.Rotation = uint8(n)
		case name == "server-id-len" && hasValue:
			c.ServerIDLen, err = num(1, 255)
		case name == "nonce-len" && hasValue:
			c.NonceLen, err = num(2, 255)
		case name == "key" && hasValue:
			if c.Key != nil {
				return Config{}, fmt.Errorf("quiclb: key given twice in %q", s)
			}
			c.Key, err = hex.DecodeString(value)
			if err != nil || len(c.Key) != KeyLen {
				return Config{}, fmt.Errorf("quiclb: key=%q is not %d hex digits", value, 2*KeyLen)
			}
		case name == "encode-length" && !hasValue:
			c.EncodeLength = true
		default:
			return Config{}, fmt.Errorf("quiclb: unknown field %q in %q (want rotation=, server-id-len=, nonce-len=, key=, encode-length)", field, s)
		}
		if err != nil {
			return Config{}, err
		}
	}
	for i, name := range [3]string{"rotation", "server-id-len", "nonce-len"} {
		if !seen[i] {
			return Config{}, fmt.Errorf("quiclb: %s missing in %q", name, s)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ServerID is a server ID of 1 to MaxServerIDLen octets. It is a
// comparable value, usable as a map key; the zero ServerID is empty and
// belongs to no server.
type ServerID struct {
	b [MaxServerIDLen]byte
	n uint8
}

// ServerIDFromBytes returns the server ID b. It fails if b is empty or
// longer than MaxServerIDLen.
func ServerIDFromBytes(b []byte) (ServerID, error) {
	if len(b) < MinServerIDLen || len(b) > MaxServerIDLen {
		return ServerID{}, fmt.Errorf("quiclb: server ID of %d octets is not %d..%d", len(b), MinServerIDLen, MaxServerIDLen)
	}
	var s ServerID
	s.n = uint8(copy(s.b[:], b))
	return s, nil
}

// ParseServerID parses a server ID written in hex, as String writes it.
func ParseServerID(s string) (ServerID, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return ServerID{}, fmt.Errorf("quiclb: server ID %q is not hex", s)
	}
	return ServerIDFromBytes(b)
}

// Len returns the length of s in octets.
func (s ServerID) Len() int { return int(s.n) }

// Bytes returns the octets of s in a new slice.
func (s ServerID) Bytes() []byte { return append([]byte(nil), s.b[:s.n]...) }

// AppendTo appends the octets of s to dst and returns the extended slice.
func (s ServerID) AppendTo(dst []byte) []byte { return append(dst, s.b[:s.n]...) }

// String returns s in hex.
func (s ServerID) String() string { return hex.EncodeToString(s.b[:s.n]) }

// MarshalText implements encoding.TextMarshaler: s in hex.
func (s ServerID) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseServerID.
func (s *ServerID) UnmarshalText(text []byte) error {
	n, err := ParseServerID(string(text))
	if err != nil {
		return err
	}
	*s = n
	return nil
}
