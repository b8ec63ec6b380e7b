//go:build linux

package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/udpmux/udpmux/internal/prereq"
)

// sourceListener is a proxy listener on addr with backends and the
// listener keys extra.
func sourceListener(addr, backends, extra string) string {
	return "listeners:\n  - {name: a, handler: proxy, address: \"" + addr + "\", backends: [" + backends + "]" + extra + "}\n"
}

// TestSourceConfig: listeners[].source and what validate refuses with
// source: client, the capability as the test says.
func TestSourceConfig(t *testing.T) {
	v4, v6 := `"198.18.0.1:2"`, `"[2001:db8::1]:2"`
	tests := []struct {
		name, body string
		capable    bool
		capErr     error
		want       string // "" accepted
	}{
		{"default", sourceListener("198.18.0.2:1", v4, ""), false, nil, ""},
		{"udpmux", sourceListener("198.18.0.2:1", v4, ", source: udpmux"), false, nil, ""},
		{"client", sourceListener("198.18.0.2:1", v4+", "+`"198.18.0.3:2"`, ", source: client, dissector: wireguard"), true, nil, ""},
		{"client IPv6", sourceListener("[2001:db8::2]:1", v6, ", source: client"), true, nil, ""},
		{"client wildcard IPv4", sourceListener("0.0.0.0:1", v4, ", source: client"), true, nil, ""},
		{"unknown", sourceListener("198.18.0.2:1", v4, ", source: server"), true, nil, `listeners[0].source: "server" is not one of udpmux, client`},
		{"echo", "listeners:\n  - {name: a, handler: echo, address: \"198.18.0.2:1\", source: client}\n", true, nil, "listeners[0].source: client: only the proxy handler sends to backends"},
		{"noop", sourceListener("198.18.0.2:1", v4, ", source: client, dissector: noop"), true, nil, "listeners[0].source: client sends each session's datagrams from its client's address, and dissector: noop makes no sessions"},
		{"no capability", sourceListener("198.18.0.2:1", v4, ", source: client"), false, nil, "listeners[0].source: client sends from clients' addresses (IP_TRANSPARENT), which needs CAP_NET_ADMIN (or CAP_NET_RAW)"},
		{"capability unknown", sourceListener("198.18.0.2:1", v4, ", source: client"), false, errors.New("capget: boom"), "listeners[0].source: client: capget: boom"},
		{"dual-stack wildcard", sourceListener("[::]:1", v6, ", source: client"), true, nil, "listeners[0].source: client on [::]:1, which takes IPv4 and IPv6 clients alike"},
		{"IPv6 backend of IPv4 clients", sourceListener("198.18.0.2:1", v4+", "+v6, ", source: client"), true, nil, "listeners[0].backends[1]: [2001:db8::1]:2: with source: client, a backend must be of the family of the clients of 198.18.0.2:1"},
		{"IPv4 backend of IPv6 clients", sourceListener("[2001:db8::2]:1", v4, ", source: client"), true, nil, "listeners[0].backends[0]: 198.18.0.1:2: with source: client"},
	}
	defer func(f func() (bool, error)) { canBindTransparent = f }(canBindTransparent)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			canBindTransparent = func() (bool, error) { return tc.capable, tc.capErr }
			_, err := loadConfig(writeConfig(t, tc.body))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v; want one with %q", err, tc.want)
			}
		})
	}
}

// TestValidateChecksTheCapability runs `udpmux validate` on a source:
// client listener with only the capabilities each case keeps (setpriv
// drops the others before it runs the binary): refused without
// CAP_NET_ADMIN and CAP_NET_RAW, naming the key, accepted with either.
func TestValidateChecksTheCapability(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: runs udpmux validate with some of root's capabilities")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		prereq.Missing(t, "setpriv not found (apt-get install util-linux)")
	}
	bin := buildDaemon(t)
	path := writeConfig(t, sourceListener("198.18.0.2:1", `"198.18.0.1:2"`, ", source: client"))
	for _, tc := range []struct {
		caps string // setpriv's bounding set
		ok   bool
	}{
		{"-all", false},
		{"-all,+net_bind_service", false},
		{"-all,+net_admin", true},
		{"-all,+net_raw", true},
	} {
		t.Run(tc.caps, func(t *testing.T) {
			out, err := exec.Command(setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set="+tc.caps, "--", bin, "validate", "-c", path).CombinedOutput()
			switch {
			case tc.ok && err != nil:
				t.Errorf("refused: %v\n%s", err, out)
			case !tc.ok && (err == nil || !strings.Contains(string(out), "listeners[0].source: client sends from clients' addresses")):
				t.Errorf("exit %v; want refused naming listeners[0].source:\n%s", err, out)
			}
		})
	}
}
