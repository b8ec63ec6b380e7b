//go:build linux

package main

import (
	"fmt"

	"github.com/udpmux/udpmux/dissect/quic"
	"github.com/udpmux/udpmux/quiclb"
)

// quicConfig tunes dissector: quic.
type quicConfig struct {
	// LBConfigs are the QUIC-LB configurations the backends issue
	// connection IDs with, in quiclb.ParseConfig's text form, at most one
	// per config rotation codepoint (0 to 6): more than one while a new
	// one is rolled out. Without any, no connection ID is routable.
	LBConfigs []string `mapstructure:"lb_configs"`
	// CIDLen is the length of the backends' connection IDs, which short
	// headers do not say; 0 takes it from the QUIC-LB configuration a
	// connection ID's first octet names.
	CIDLen int `mapstructure:"cid_len"`
	// GreaseQUICBit accepts packets with the fixed bit clear, which
	// clients send when the backends advertise grease_quic_bit (RFC 9287).
	GreaseQUICBit bool `mapstructure:"grease_quic_bit"`
}

func (c *quicConfig) isZero() bool {
	return len(c.LBConfigs) == 0 && c.CIDLen == 0 && !c.GreaseQUICBit
}

// quicDissector builds dissector: quic for the listener, with the server
// IDs of bs, a proxy's backends, and checks that they can work with the
// QUIC-LB configurations: a proxy routes a connection ID to its backend
// only if every backend has the server ID its connection IDs carry, of
// the configurations' length.
func (l *listenerConfig) quicDissector(key func(string) string, bs backends) (*quic.Dissector, error) {
	qc := &l.QUIC
	if qc.CIDLen < 0 || qc.CIDLen > quiclb.MaxCIDLen {
		return nil, fmt.Errorf("%s: %d is not within 0..%d (0 takes the QUIC-LB configurations' lengths)", key("quic.cid_len"), qc.CIDLen, quiclb.MaxCIDLen)
	}
	var configs []quiclb.Config
	for i, text := range qc.LBConfigs {
		ckey := key(fmt.Sprintf("quic.lb_configs[%d]", i))
		c, err := quiclb.ParseConfig(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ckey, err)
		}
		for j, o := range configs {
			if o.Rotation == c.Rotation {
				return nil, fmt.Errorf("%s: config rotation %d is already that of quic.lb_configs[%d] (one configuration per codepoint 0..%d)", ckey, c.Rotation, j, quiclb.MaxRotation)
			}
			if o.ServerIDLen != c.ServerIDLen && l.Handler == "proxy" {
				return nil, fmt.Errorf("%s: server-id-len=%d, but quic.lb_configs[%d] has %d: each backend has one server ID, which must fit every configuration", ckey, c.ServerIDLen, j, o.ServerIDLen)
			}
		}
		if qc.CIDLen != 0 && qc.CIDLen < c.CIDLen() {
			return nil, fmt.Errorf("%s: %d is shorter than the %d octets of this configuration's connection IDs (cid_len 0 takes their length)", key("quic.cid_len"), qc.CIDLen, c.CIDLen())
		}
		configs = append(configs, c)
	}
	cfg := quic.Config{CIDLen: qc.CIDLen, GreaseQUICBit: qc.GreaseQUICBit}
	if len(configs) > 0 {
		dec, err := quiclb.NewDecoder(configs...)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key("quic.lb_configs"), err)
		}
		cfg.Decoder = dec
	}
	if l.Handler == "proxy" {
		for j, addr := range bs.addrs {
			idKey := key(fmt.Sprintf("backends[%d].server_id", j))
			var sid quiclb.ServerID
			if bs.sids != nil {
				sid = bs.sids[j]
			}
			switch {
			case len(configs) == 0 && sid.Len() > 0:
				return nil, fmt.Errorf("%s: server IDs need quic.lb_configs, the QUIC-LB configurations that connection IDs carry them in", idKey)
			case len(configs) > 0 && sid.Len() == 0:
				return nil, fmt.Errorf("%s: missing for %v: with quic.lb_configs every backend needs the server ID its connection IDs carry", idKey, addr)
			case len(configs) > 0 && sid.Len() != configs[0].ServerIDLen:
				return nil, fmt.Errorf("%s: %v has %d octets; the QUIC-LB configurations' server IDs have %d (server-id-len)", idKey, sid, sid.Len(), configs[0].ServerIDLen)
			}
			if sid.Len() > 0 {
				cfg.ServerIDs = append(cfg.ServerIDs, sid)
			}
		}
	}
	d, err := quic.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key("quic"), err)
	}
	return d, nil
}
