//go:build linux

package main

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/proxy/check"
)

// healthFiles are key files for the health section's tests.
type healthFiles struct {
	wgHealth, wgBackend, wgOpen, staticKey string
	wgBackendPub                           string
}

func newHealthFiles(t *testing.T) healthFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdh.PrivateKey {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	hk, bk := key(), key()
	b64 := base64.StdEncoding.EncodeToString
	static := "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n" +
		strings.Repeat(strings.Repeat("ab", 16)+"\n", 16) + "-----END OpenVPN Static key V1-----\n"
	return healthFiles{
		wgHealth:     write("health.key", b64(hk.Bytes())+"\n", 0o600),
		wgBackend:    write("backend.key", b64(bk.Bytes())+"\n", 0o600),
		wgOpen:       write("open.key", b64(hk.Bytes())+"\n", 0o644),
		staticKey:    write("ta.key", static, 0o600),
		wgBackendPub: b64(bk.PublicKey().Bytes()),
	}
}

// healthListener is a proxy listener with dissector d and the health
// section's body (YAML lines indented under health:).
func healthListener(d, extra, health string) string {
	return "listeners:\n  - name: a\n    handler: proxy\n    address: \"127.0.0.1:1\"\n    backends: [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n" +
		"    dissector: " + d + "\n" + extra + "    health:\n" + health
}

func TestHealthConfig(t *testing.T) {
	f := newHealthFiles(t)
	tests := []struct {
		name, body string
		// probe is the probe's type name, "" for none; interval, timeout,
		// rise and fall what the handler gets.
		probe             string
		interval, timeout time.Duration
		rise, fall        int
	}{
		{"quic, defaults", healthListener("quic", "", "      probe: quic\n"), "check.QUIC", 2 * time.Second, time.Second, 2, 3},
		{"short interval", healthListener("flow", "", "      probe: generic\n      interval: 200ms\n      generic: {send: ping}\n"), "*check.generic", 200 * time.Millisecond, 200 * time.Millisecond, 2, 3},
		{"everything", healthListener("openvpn", "", "      probe: openvpn\n      interval: 5s\n      timeout: 2s\n      rise: 1\n      fall: 5\n      openvpn: {tls_auth: "+f.staticKey+", key_direction: \"0\", auth: sha256}\n"), "check.openVPN", 5 * time.Second, 2 * time.Second, 1, 5},
		{"tls-crypt", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_crypt: "+f.staticKey+"}\n"), "check.openVPN", 2 * time.Second, time.Second, 2, 3},
		{"wireguard, the backends' key from the dissector", healthListener("wireguard", "    wireguard: {private_key: "+f.wgBackend+"}\n", "      probe: wireguard\n      wireguard: {private_key: "+f.wgHealth+"}\n"), "*check.wireGuard", 2 * time.Second, time.Second, 2, 3},
		{"wireguard, the backends' public key", healthListener("wireguard", "", "      probe: wireguard\n      wireguard: {private_key: "+f.wgHealth+", backend_public_key: "+f.wgBackendPub+"}\n"), "*check.wireGuard", 2 * time.Second, time.Second, 2, 3},
		{"passive only", healthListener("flow", "", "      probe: none\n      fall: 4\n"), "", 0, 0, 2, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseConfig([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			l := &cfg.listeners[0]
			cc, hc, err := l.Health.check(func(k string) string { return k }, l)
			if err != nil {
				t.Fatal(err)
			}
			if hc.Rise != 0 && hc.Rise != tc.rise || hc.Fall != 0 && hc.Fall != tc.fall {
				t.Errorf("rise %d fall %d; want %d %d", hc.Rise, hc.Fall, tc.rise, tc.fall)
			}
			if tc.probe == "" {
				if cc != nil {
					t.Fatalf("checks %+v; want none", cc)
				}
				return
			}
			if got := typeName(cc.Probe); got != tc.probe || cc.Interval != tc.interval || cc.Timeout != tc.timeout {
				t.Errorf("probe %s interval %v timeout %v; want %s %v %v", got, cc.Interval, cc.Timeout, tc.probe, tc.interval, tc.timeout)
			}
			h := cfg.mux.Listeners[0].Handler.(*proxy.Handler)
			if h.CheckSockets() != 2 {
				t.Errorf("CheckSockets %d; want one per backend", h.CheckSockets())
			}
		})
	}
}

// typeName is the probe's type as %T prints it, without the package path.
func typeName(p check.Probe) string { return fmt.Sprintf("%T", p) }

func TestHealthConfigErrorsNameTheKey(t *testing.T) {
	f := newHealthFiles(t)
	const h = "listeners[0].health."
	tests := []configError{
		{"unknown probe", healthListener("flow", "", "      probe: icmp\n"), h + `probe: "icmp" is not one of none, openvpn, wireguard, quic, generic`},
		{"interval without a probe", healthListener("flow", "", "      interval: 1s\n"), h + "probe: missing"},
		{"bad interval", healthListener("quic", "", "      probe: quic\n      interval: 10ms\n"), h + `interval: "10ms" is not a duration from 100ms to 1h0m0s`},
		{"bad timeout", healthListener("quic", "", "      probe: quic\n      timeout: soon\n"), h + `timeout: "soon" is not a duration`},
		{"timeout past the interval", healthListener("quic", "", "      probe: quic\n      interval: 1s\n      timeout: 2s\n"), h + "timeout: 2s is longer than health.interval (1s)"},
		{"default timeout past the interval", healthListener("quic", "", "      probe: quic\n      timeout: 1s\n      interval: 500ms\n"), h + "timeout: 1s is longer than health.interval (500ms)"},
		{"rise", healthListener("quic", "", "      probe: quic\n      rise: -1\n"), h + "rise: -1 is not within 1..100"},
		{"fall", healthListener("quic", "", "      probe: quic\n      fall: 101\n"), h + "fall: 101 is not within 1..100"},
		{"another probe's settings", healthListener("openvpn", "", "      probe: quic\n      openvpn: {tls_crypt: "+f.staticKey+"}\n"), h + `openvpn: only probe: openvpn has these settings (probe is "quic")`},
		{"settings without a probe", healthListener("flow", "", "      generic: {send: x}\n"), h + `generic: only probe: generic has these settings (probe is "")`},
		{"tls-auth and tls-crypt", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_auth: "+f.staticKey+", tls_crypt: "+f.staticKey+"}\n"), h + "openvpn.tls_crypt: a server has tls-auth or tls-crypt, not both"},
		{"no such key file", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_auth: /nonexistent}\n"), h + "openvpn.tls_auth: "},
		{"not a static key", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_crypt: "+f.wgHealth+"}\n"), h + "openvpn.tls_crypt: check: no"},
		{"bad key direction", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_auth: "+f.staticKey+", key_direction: \"2\"}\n"), h + `openvpn.key_direction: "2" is not 1`},
		{"bad digest", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_auth: "+f.staticKey+", auth: md5}\n"), h + `openvpn.auth: "md5" is not one of SHA1, SHA256, SHA512`},
		{"direction without tls-auth", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {key_direction: \"1\"}\n"), h + "openvpn: key_direction and auth need tls_auth"},
		{"direction with tls-crypt", healthListener("openvpn", "", "      probe: openvpn\n      openvpn: {tls_crypt: "+f.staticKey+", key_direction: \"1\"}\n"), h + "openvpn: key_direction and auth are tls-auth's"},
		{"wireguard without a key", healthListener("wireguard", "", "      probe: wireguard\n"), h + "wireguard.private_key: missing"},
		{"wireguard key others may read", healthListener("wireguard", "", "      probe: wireguard\n      wireguard: {private_key: "+f.wgOpen+"}\n"), h + "wireguard.private_key: wireguard: private key file"},
		{"wireguard without the backends' key", healthListener("wireguard", "", "      probe: wireguard\n      wireguard: {private_key: "+f.wgHealth+"}\n"), h + "wireguard.backend_public_key: missing"},
		{"wireguard bad public key", healthListener("wireguard", "", "      probe: wireguard\n      wireguard: {private_key: "+f.wgHealth+", backend_public_key: abc}\n"), h + `wireguard.backend_public_key: "abc" is not a public key`},
		{"wireguard with the backends' own key", healthListener("wireguard", "    wireguard: {private_key: "+f.wgBackend+"}\n", "      probe: wireguard\n      wireguard: {private_key: "+f.wgBackend+"}\n"), h + "wireguard.private_key: this is the backends' own key"},
		{"generic without send", healthListener("flow", "", "      probe: generic\n      generic: {expect_prefix: x}\n"), h + "generic.send: missing"},
		{"generic bad regexp", healthListener("flow", "", "      probe: generic\n      generic: {send: x, expect_regexp: \"(\"}\n"), h + "generic.expect_regexp: "},
		{"unknown key", healthListener("flow", "", "      probe: quic\n      intervall: 1s\n"), "intervall"},
		{"another protocol's probe", healthListener("openvpn", "", "      probe: quic\n"), h + "probe: quic probes cannot check the backends of dissector: openvpn"},
		{"health on echo", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:1\", health: {probe: quic}}", "listeners[0].health: only the proxy handler has backends to check"},
	}
	testConfigErrors(t, tests)
}
