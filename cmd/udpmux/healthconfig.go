//go:build linux

package main

import (
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/proxy/check"
)

// healthConfig is a proxy listener's health section: the active health
// checks of its backends. Without a probe there are none, and only the
// passive signal (refusals) takes backends out.
type healthConfig struct {
	// Probe is none (""), openvpn, wireguard, quic or generic.
	Probe    string `mapstructure:"probe"`
	Interval string `mapstructure:"interval"`
	Timeout  string `mapstructure:"timeout"`
	Rise     int    `mapstructure:"rise"`
	Fall     int    `mapstructure:"fall"`
	// The settings of each probe; only the chosen probe's may be set.
	OpenVPN   openvpnHealth   `mapstructure:"openvpn"`
	WireGuard wireguardHealth `mapstructure:"wireguard"`
	Generic   genericHealth   `mapstructure:"generic"`
}

// openvpnHealth is the OpenVPN probe's control channel protection: the
// servers' tls-auth or tls-crypt key file.
type openvpnHealth struct {
	TLSAuth string `mapstructure:"tls_auth"`
	// KeyDirection is the clients' key-direction for tls-auth: 1 (the
	// default, for servers with `tls-auth FILE 0`), 0, or none.
	KeyDirection string `mapstructure:"key_direction"`
	// Auth is the servers' --auth digest for tls-auth.
	Auth     string `mapstructure:"auth"`
	TLSCrypt string `mapstructure:"tls_crypt"`
}

// wireguardHealth is the WireGuard probe's keys.
type wireguardHealth struct {
	// PrivateKey is the health peer's key file, which the backends list
	// as a peer by its public key.
	PrivateKey string `mapstructure:"private_key"`
	// BackendPublicKey is the backends' public key (base64, as wg prints
	// it); empty takes it from the listener's wireguard.private_key.
	BackendPublicKey string `mapstructure:"backend_public_key"`
}

// genericHealth is the generic probe's exchange.
type genericHealth struct {
	Send         string `mapstructure:"send"`
	ExpectPrefix string `mapstructure:"expect_prefix"`
	ExpectRegexp string `mapstructure:"expect_regexp"`
}

// Defaults and bounds of the health section's keys.
const (
	minCheckInterval = 100 * time.Millisecond
	maxCheckInterval = time.Hour
	minCheckTimeout  = 10 * time.Millisecond
	maxRiseFall      = 100
)

// check validates the health section of l, a proxy listener, and returns
// its active health checks, nil without a probe, and the rise and fall of
// its balancer.
func (hc *healthConfig) check(key func(string) string, l *listenerConfig) (*proxy.CheckConfig, proxy.HealthConfig, error) {
	hkey := func(k string) string { return key("health." + k) }
	var health proxy.HealthConfig
	if hc.Rise < 0 || hc.Rise > maxRiseFall {
		return nil, health, fmt.Errorf("%s: %d is not within 1..%d (0 means %d)", hkey("rise"), hc.Rise, maxRiseFall, proxy.DefaultRise)
	}
	if hc.Fall < 0 || hc.Fall > maxRiseFall {
		return nil, health, fmt.Errorf("%s: %d is not within 1..%d (0 means %d)", hkey("fall"), hc.Fall, maxRiseFall, proxy.DefaultFall)
	}
	health.Rise, health.Fall = hc.Rise, hc.Fall
	for _, o := range []struct {
		name string
		set  bool
	}{{"openvpn", hc.OpenVPN != (openvpnHealth{})}, {"wireguard", hc.WireGuard != (wireguardHealth{})}, {"generic", hc.Generic != (genericHealth{})}} {
		if o.set && hc.Probe != o.name {
			return nil, health, fmt.Errorf("%s: only probe: %s has these settings (probe is %q)", hkey(o.name), o.name, hc.Probe)
		}
	}
	cc := &proxy.CheckConfig{Interval: proxy.DefaultCheckInterval, Timeout: proxy.DefaultCheckTimeout}
	if hc.Interval != "" {
		d, err := time.ParseDuration(hc.Interval)
		if err != nil || d < minCheckInterval || d > maxCheckInterval {
			return nil, health, fmt.Errorf("%s: %q is not a duration from %v to %v", hkey("interval"), hc.Interval, minCheckInterval, maxCheckInterval)
		}
		cc.Interval = d
		cc.Timeout = min(cc.Timeout, d)
	}
	if hc.Timeout != "" {
		d, err := time.ParseDuration(hc.Timeout)
		if err != nil || d < minCheckTimeout {
			return nil, health, fmt.Errorf("%s: %q is not a duration of at least %v", hkey("timeout"), hc.Timeout, minCheckTimeout)
		}
		cc.Timeout = d
	}
	if cc.Timeout > cc.Interval {
		return nil, health, fmt.Errorf("%s: %v is longer than health.interval (%v): a backend would have two probes in flight", hkey("timeout"), cc.Timeout, cc.Interval)
	}
	// A tunnel or QUIC dissector says what the backends speak: another
	// protocol's probe would go unanswered and mark every backend down.
	switch hc.Probe {
	case "openvpn", "wireguard", "quic":
		switch l.Dissector {
		case "openvpn", "wireguard", "quic":
			if l.Dissector != hc.Probe {
				return nil, health, fmt.Errorf("%s: %s probes cannot check the backends of dissector: %s, which would never answer them; use probe: %s (or generic)",
					hkey("probe"), hc.Probe, l.Dissector, l.Dissector)
			}
		}
	}
	var err error
	switch hc.Probe {
	case "", "none":
		if hc.Interval != "" || hc.Timeout != "" {
			return nil, health, fmt.Errorf("%s: missing: health.interval and health.timeout need a probe (openvpn, wireguard, quic, generic)", hkey("probe"))
		}
		return nil, health, nil
	case "openvpn":
		cc.Probe, err = hc.OpenVPN.probe(hkey)
	case "wireguard":
		cc.Probe, err = hc.WireGuard.probe(hkey, l)
	case "quic":
		cc.Probe = check.QUIC{}
	case "generic":
		cc.Probe, err = hc.Generic.probe(hkey)
	default:
		return nil, health, fmt.Errorf("%s: %q is not one of none, openvpn, wireguard, quic, generic", hkey("probe"), hc.Probe)
	}
	if err != nil {
		return nil, health, err
	}
	return cc, health, nil
}

func (o *openvpnHealth) probe(hkey func(string) string) (check.Probe, error) {
	var cfg check.OpenVPNConfig
	switch {
	case o.TLSAuth != "" && o.TLSCrypt != "":
		return nil, fmt.Errorf("%s: a server has tls-auth or tls-crypt, not both", hkey("openvpn.tls_crypt"))
	case o.TLSCrypt != "":
		if o.KeyDirection != "" || o.Auth != "" {
			return nil, fmt.Errorf("%s: key_direction and auth are tls-auth's (tls-crypt has its own)", hkey("openvpn"))
		}
		k, err := check.LoadStaticKey(o.TLSCrypt)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hkey("openvpn.tls_crypt"), err)
		}
		cfg = check.OpenVPNConfig{Wrap: "tls-crypt", Key: k}
	case o.TLSAuth != "":
		k, err := check.LoadStaticKey(o.TLSAuth)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hkey("openvpn.tls_auth"), err)
		}
		cfg = check.OpenVPNConfig{Wrap: "tls-auth", Key: k, Digest: strings.ToUpper(o.Auth)}
		switch o.KeyDirection {
		case "", "1":
			cfg.Direction = check.KeyInverse
		case "0":
			cfg.Direction = check.KeyNormal
		case "none":
			cfg.Direction = check.KeyBidirectional
		default:
			return nil, fmt.Errorf("%s: %q is not 1 (servers with tls-auth FILE 0), 0 or none (servers with tls-auth FILE)", hkey("openvpn.key_direction"), o.KeyDirection)
		}
		switch cfg.Digest {
		case "", "SHA1", "SHA256", "SHA512":
		default:
			return nil, fmt.Errorf("%s: %q is not one of SHA1, SHA256, SHA512 (the servers' --auth)", hkey("openvpn.auth"), o.Auth)
		}
	case o.KeyDirection != "" || o.Auth != "":
		return nil, fmt.Errorf("%s: key_direction and auth need tls_auth, the servers' key file", hkey("openvpn"))
	}
	p, err := check.NewOpenVPN(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", hkey("openvpn"), err)
	}
	return p, nil
}

func (w *wireguardHealth) probe(hkey func(string) string, l *listenerConfig) (check.Probe, error) {
	if w.PrivateKey == "" {
		return nil, fmt.Errorf("%s: missing: the health peer's key file (wg genkey), which every backend lists as a peer", hkey("wireguard.private_key"))
	}
	priv, err := wireguard.LoadPrivateKey(w.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", hkey("wireguard.private_key"), err)
	}
	defer clear(priv[:])
	var server [32]byte
	switch {
	case w.BackendPublicKey != "":
		b, err := base64.StdEncoding.DecodeString(w.BackendPublicKey)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%s: %q is not a public key as wg prints it (44 characters of base64)", hkey("wireguard.backend_public_key"), w.BackendPublicKey)
		}
		server = [32]byte(b)
	case l.WireGuard.PrivateKey != "":
		k, err := wireguard.LoadPrivateKey(l.WireGuard.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hkey("wireguard.backend_public_key"), err)
		}
		server, err = check.WireGuardPublicKey(k)
		clear(k[:])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", hkey("wireguard.backend_public_key"), err)
		}
	default:
		return nil, fmt.Errorf("%s: missing: the backends' public key (or the listener's wireguard.private_key)", hkey("wireguard.backend_public_key"))
	}
	if pub, _ := check.WireGuardPublicKey(priv); pub == server {
		return nil, fmt.Errorf("%s: this is the backends' own key; the health peer needs a key of its own (wg genkey)", hkey("wireguard.private_key"))
	}
	p, err := check.NewWireGuard(priv, server)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", hkey("wireguard"), err)
	}
	return p, nil
}

func (g *genericHealth) probe(hkey func(string) string) (check.Probe, error) {
	if g.Send == "" {
		return nil, fmt.Errorf("%s: missing: the datagram to send ({nonce} stands for 16 random hex digits)", hkey("generic.send"))
	}
	p, err := check.NewGeneric(check.GenericConfig{Send: g.Send, Prefix: g.ExpectPrefix, Regexp: g.ExpectRegexp})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", hkey("generic.expect_regexp"), err)
	}
	return p, nil
}
