//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodConfig = `
workers: 2
batch: 32
listeners:
  - name: echo
    address: "127.0.0.1:9000"
    handler: echo
    dissector: flow
    idle_timeout: 30s
  - name: dns
    address: "[::1]:5353"
    handler: discard
    dissector: noop
sessions:
  max: 5000
`

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.mux.Workers != 2 || cfg.mux.Batch != 32 || cfg.mux.MaxSessions != 5000 || len(cfg.mux.Listeners) != 2 {
		t.Errorf("parsed %+v", cfg.mux)
	}
	if got := cfg.mux.Listeners[0].IdleTimeout.String(); got != "30s" {
		t.Errorf("idle_timeout %s, want 30s", got)
	}
	if got := cfg.mux.Listeners[1].IdleTimeout.String(); got != "1m0s" {
		t.Errorf("default idle_timeout %s, want 1m0s", got)
	}
}

// TestLogConfig: log.format and the session log's keys, their defaults
// (text, off, 100 lines a second in bursts of 200) and what they set.
func TestLogConfig(t *testing.T) {
	tests := []struct {
		name, log   string
		json        bool
		rate, burst int // 0: the session log is off
	}{
		{"defaults", "", false, 0, 0},
		{"json", "log: {format: json}\n", true, 0, 0},
		{"sessions", "log: {sessions: true}\n", false, defaultSessionsRate, defaultSessionsBurst},
		{"sessions bounded", "log: {sessions: true, sessions_rate: 5, sessions_burst: 7, level: debug}\n", false, 5, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(writeConfig(t, tc.log+goodConfig))
			if err != nil {
				t.Fatal(err)
			}
			var rate, burst int
			if cfg.sessionLog != nil {
				rate, burst = cfg.sessionLog.rate, cfg.sessionLog.burst
			}
			if cfg.logJSON != tc.json || rate != tc.rate || burst != tc.burst {
				t.Errorf("json %v, session log %d/s burst %d; want %v, %d, %d", cfg.logJSON, rate, burst, tc.json, tc.rate, tc.burst)
			}
		})
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	t.Setenv("UDPMUX_WORKERS", "1")
	t.Setenv("UDPMUX_SESSIONS_MAX", "77")
	cfg, err := loadConfig(writeConfig(t, goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.mux.Workers != 1 || cfg.mux.MaxSessions != 77 {
		t.Errorf("workers %d sessions.max %d, want 1 and 77", cfg.mux.Workers, cfg.mux.MaxSessions)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	listener := func(fields string) string {
		return "listeners:\n  - name: a\n    handler: echo\n" + fields
	}
	tests := []configError{
		{"missing port", listener(`    address: "0.0.0.0"`), "listeners[0].address: missing port in address"},
		{"name as host", listener(`    address: "localhost:9000"`), `listeners[0].address: "localhost" is not an IP address`},
		{"bad port", listener(`    address: "127.0.0.1:70000"`), `listeners[0].address: port "70000" is not a number within 0..65535`},
		{"no address", listener(""), "listeners[0].address: missing"},
		{"bad handler", "listeners:\n  - address: \"127.0.0.1:1\"\n    handler: nope", `listeners[0].handler: "nope" is not one of echo, discard, proxy`},
		{"bad dissector", listener("    address: \"127.0.0.1:1\"\n    dissector: dtls"), `listeners[0].dissector: "dtls" is not one of flow, noop, wireguard, openvpn, quic`},
		{"bad duration", listener("    address: \"127.0.0.1:1\"\n    idle_timeout: 6x"), `listeners[0].idle_timeout: "6x" is not a duration such as 60s or 5m`},
		{"short idle", listener("    address: \"127.0.0.1:1\"\n    idle_timeout: 10ms"), "listeners[0].idle_timeout: 10ms is shorter than the 1s sweep resolution"},
		{"no listeners", "workers: 1", "listeners: none configured"},
		{"batch", "batch: 2000\n" + listener(`    address: "127.0.0.1:1"`), "batch: 2000 is not within 1..1024"},
		{"workers beyond the machine", "workers: 1000000000000\n" + listener(`    address: "127.0.0.1:1"`), "workers: 1000000000000 is more than"},
		{"workers 100000", "workers: 100000\n" + listener(`    address: "127.0.0.1:1"`), "workers: 100000 is more than"},
		{"sessions max huge", "sessions:\n  max: 1000000000000\n" + listener(`    address: "127.0.0.1:1"`), "sessions.max: 1000000000000 is not within 1..1073741824"},
		{"recv buffer huge", "socket:\n  recv_buffer: 1099511627776\n" + listener(`    address: "127.0.0.1:1"`), "socket.recv_buffer: 1099511627776 is not within 0..2147483647"},
		{"send buffer negative", "socket:\n  send_buffer: -1\n" + listener(`    address: "127.0.0.1:1"`), "socket.send_buffer: -1 is not within"},
		{"proxy with noop", "listeners:\n  - {name: a, handler: proxy, dissector: noop, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\"]}", "listeners[0].dissector: noop hands every datagram over without a session, and the handler (*proxy.Handler) serves sessions only"},
		{"v4-mapped duplicate", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:1\"}\n  - {name: b, handler: echo, address: \"[::ffff:127.0.0.1]:1\"}", "listeners[1].address: 127.0.0.1:1 overlaps listeners[0].address 127.0.0.1:1"},
		{"wildcard overlap", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:7\"}\n  - {name: b, handler: echo, address: \"0.0.0.0:7\"}", "listeners[1].address: 0.0.0.0:7 overlaps listeners[0].address 127.0.0.1:7"},
		{"dual-stack wildcard overlap", "listeners:\n  - {name: a, handler: echo, address: \"[::]:7\"}\n  - {name: b, handler: echo, address: \"192.0.2.1:7\"}", "listeners[1].address: 192.0.2.1:7 overlaps listeners[0].address [::]:7"},
		{"negative workers", "workers: -3\n" + listener(`    address: "127.0.0.1:1"`), "workers: -3 is negative (0 means one per CPU)"},
		{"sessions max", "sessions:\n  max: 0\n" + listener(`    address: "127.0.0.1:1"`), "sessions.max: 0 must be at least 1"},
		{"no probe sockets", "sessions:\n  max_probe_sockets: 0\n" + listener(`    address: "127.0.0.1:1"`), "sessions.max_probe_sockets: 0 must be at least 1"},
		{"recovery rate", "recovery:\n  rate: 0\n" + listener(`    address: "127.0.0.1:1"`), "recovery.rate: 0 must be at least 1 (recovery.enabled: false turns recovery off)"},
		{"recovery rate per source", "recovery:\n  rate_per_source: -2\n" + listener(`    address: "127.0.0.1:1"`), "recovery.rate_per_source: -2 must be at least 1"},
		{"recovery fanout", "recovery:\n  fanout: 65\n" + listener(`    address: "127.0.0.1:1"`), "recovery.fanout: 65 asks more backends per datagram than 64"},
		{"recovery sockets", "recovery:\n  fanout: 8\n  max_sockets: 4\n" + listener(`    address: "127.0.0.1:1"`), "recovery.max_sockets: 4 is fewer than one recovery's recovery.fanout (8)"},
		{"recovery timeout", "recovery:\n  timeout: 10ms\n" + listener(`    address: "127.0.0.1:1"`), `recovery.timeout: "10ms" is not a duration from 100ms to 1m`},
		{"recovery with least-sessions", "listeners:\n  - {name: a, handler: proxy, dissector: openvpn, balance: least-sessions, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\"]}", "listeners[0].balance: least-sessions picks a new session's backend by what this process has seen"},
		{"unknown key", "wrokers: 2\n" + listener(`    address: "127.0.0.1:1"`), "wrokers"},
		{"wrong type", "workers: many\n" + listener(`    address: "127.0.0.1:1"`), "workers"},
		{"duplicate name", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:1\"}\n  - {name: a, handler: echo, address: \"127.0.0.1:2\"}", `listeners[1].name: "a" is already the name of listeners[0]`},
		{"duplicate address", "listeners:\n  - {name: a, handler: echo, address: \"127.0.0.1:1\"}\n  - {name: b, handler: echo, address: \"127.0.0.1:1\"}", "listeners[1].address: 127.0.0.1:1 overlaps listeners[0].address 127.0.0.1:1"},
		{"backends on echo", listener("    address: \"127.0.0.1:1\"\n    backends: [\"127.0.0.1:2\"]"), "listeners[0].backends: only the proxy handler has backends"},
		{"proxy without backends", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\"}", "listeners[0].backends: a proxy needs at least one backend"},
		{"proxy bad backend", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\", \"10.0.0.1\"]}", "listeners[0].backends[1]: missing port in address"},
		{"proxy duplicate backend", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\", \"127.0.0.1:2\"]}", "listeners[0].backends[1]: 127.0.0.1:2 is already backends[0]"},
		{"negative weight", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\", {address: \"127.0.0.1:3\", weight: -1}]}", "listeners[0].backends[1].weight: -1 is not within 0..1000 (0 takes no new sessions, as a drained backend)"},
		{"weight too large", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [{address: \"127.0.0.1:2\", weight: 1001}]}", "listeners[0].backends[0].weight: 1001 is not within 0..1000"},
		{"weight not a number", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [{address: \"127.0.0.1:2\", weight: heavy}]}", "weight"},
		{"every weight 0", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [{address: \"127.0.0.1:2\", weight: 0}, {address: \"127.0.0.1:3\", weight: 0}]}", "listeners[0].backends: every backend has weight 0: the listener could take no new session"},
		{"proxy bad balance", "listeners:\n  - {name: a, handler: proxy, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\"], balance: random}", `listeners[0].balance: "random" is not one of maglev, least-sessions, round-robin`},
		{"log level", "log:\n  level: loud\n" + listener(`    address: "127.0.0.1:1"`), `log.level: "loud" is not one of debug, info, warn, error`},
		{"log format", "log:\n  format: xml\n" + listener(`    address: "127.0.0.1:1"`), `log.format: "xml" is not one of text, json`},
		{"session log rate", "log:\n  sessions: true\n  sessions_rate: 0\n" + listener(`    address: "127.0.0.1:1"`), "log.sessions_rate: 0 is not within 1..100000 lines per second"},
		{"session log burst", "log:\n  sessions_burst: 1000000\n" + listener(`    address: "127.0.0.1:1"`), "log.sessions_burst: 1000000 is not within 1..100000 lines"},
		{"session log hidden", "log:\n  sessions: true\n  level: warn\n" + listener(`    address: "127.0.0.1:1"`), "log.sessions: the session lines are at level info, which log.level warn leaves out"},
		{"session log not a bool", "log:\n  sessions: sometimes\n" + listener(`    address: "127.0.0.1:1"`), "log.sessions"},
		{"drain timeout", "control:\n  drain_timeout: 0s\n" + listener(`    address: "127.0.0.1:1"`), `control.drain_timeout: "0s" is not a positive duration`},
		{"not yaml", "listeners: [", "read"},
	}
	testConfigErrors(t, tests)
}

// configError is a config that loadConfig must refuse with an error that
// contains want.
type configError struct{ name, body, want string }

// testConfigErrors runs a subtest per config error.
func testConfigErrors(t *testing.T, tests []configError) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tc.body))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.body)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestValidateCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"validate", "-c", writeConfig(t, goodConfig)}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	bad := writeConfig(t, "listeners:\n  - {name: a, handler: echo, address: \"0.0.0.0\"}")
	out.Reset()
	errOut.Reset()
	if code := run([]string{"validate", "-c", bad}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d for a bad config, want 1", code)
	}
	if !strings.Contains(errOut.String(), "listeners[0].address: missing port") {
		t.Errorf("stderr %q", errOut.String())
	}
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "udpmux") {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
	if code := run(nil, &out, &errOut); code != 2 {
		t.Errorf("no -c: exit %d, want 2", code)
	}
}

// FuzzConfig feeds arbitrary YAML to the loader: it must return a config or
// an error, never panic, and a config it returns must be usable.
func FuzzConfig(f *testing.F) {
	f.Add(goodConfig)
	f.Add("listeners:\n  - {name: a, handler: echo, address: \"[::]:0\", idle_timeout: 1h}")
	f.Add("workers: 1\nbatch: 1024\nsessions: {max: 1}\nlisteners: [{handler: discard, address: \"1.2.3.4:5\", dissector: noop}]")
	f.Add(quicListener("lb_configs: [\""+testLB+"\"]", `{address: "127.0.0.1:2", server_id: "0a01"}, {address: "127.0.0.1:3", server_id: "0b02"}`))
	f.Add(quicListener("cid_len: 8, grease_quic_bit: true", `"127.0.0.1:2"`))
	f.Fuzz(func(t *testing.T, body string) {
		cfg, err := loadConfig(writeConfig(t, body))
		if err != nil {
			return
		}
		if len(cfg.mux.Listeners) == 0 || cfg.mux.Batch < 1 || cfg.mux.MaxSessions < 1 {
			t.Fatalf("accepted an unusable config: %+v", cfg.mux)
		}
		for _, l := range cfg.mux.Listeners {
			if !l.Address.IsValid() || l.Handler == nil || l.Dissector == nil {
				t.Fatalf("accepted an unusable listener: %+v", l)
			}
		}
	})
}

// TestShippedConfigIsValid keeps configs/udpmux.yaml loadable.
func TestShippedConfigIsValid(t *testing.T) {
	cfg, err := loadConfig("../../configs/udpmux.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.controlSocket != defaultControlSocket || cfg.mux.Batch != 64 {
		t.Errorf("shipped config: control socket %q, batch %d", cfg.controlSocket, cfg.mux.Batch)
	}
}

// TestShippedFanoutConfigsAreValid keeps the fan-out examples loadable, the
// WireGuard one with a key of the test's own in place of its key file.
func TestShippedFanoutConfigsAreValid(t *testing.T) {
	key := filepath.Join(t.TempDir(), "wg.key")
	if err := os.WriteFile(key, []byte("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"wireguard-fanout.yaml", "openvpn-fanout.yaml", "quic-lb.yaml"} {
		text, err := os.ReadFile("../../configs/" + name)
		if err != nil {
			t.Fatal(err)
		}
		body := strings.ReplaceAll(string(text), "/etc/udpmux/wg-backend.key", key)
		cfg, err := loadConfig(writeConfig(t, body))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h := cfg.mux.Listeners[0].Handler; fmt.Sprintf("%T", h) != "*proxy.Handler" {
			t.Errorf("%s: handler %T", name, h)
		}
	}
}

func TestWireGuardConfigErrors(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	os.WriteFile(open, []byte("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=\n"), 0o644)
	listener := func(dissector, wg string) string {
		return "listeners:\n  - {name: wg, handler: proxy, address: \"127.0.0.1:1\", backends: [\"127.0.0.1:2\"], dissector: " +
			dissector + ", wireguard: {" + wg + "}}\n"
	}
	for _, tc := range []struct{ name, body, want string }{
		{"no such key file", listener("wireguard", "private_key: "+filepath.Join(dir, "none")), "listeners[0].wireguard.private_key: "},
		{"key file others may read", listener("wireguard", "private_key: "+open), "listeners[0].wireguard.private_key: "},
		{"negative rate", listener("wireguard", "decrypt_rate: -1"), "listeners[0].wireguard.decrypt_rate: -1 is negative"},
		{"settings without the dissector", listener("openvpn", "decrypt_rate: 5"), "listeners[0].wireguard: only dissector: wireguard has these settings"},
		{"unknown setting", listener("wireguard", "private_kee: x"), "private_kee"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := loadConfig(writeConfig(t, listener("wireguard", ""))); err != nil {
		t.Errorf("wireguard without a key: %v", err)
	}
}

// testLB is a QUIC-LB configuration of the QUIC tests: 2-octet server IDs,
// 9-octet connection IDs.
const testLB = "rotation=0,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207f,encode-length"

// quicListener is a config with a proxy listener with dissector: quic, the
// given quic settings (inside a YAML flow map) and backends (inside a flow
// sequence).
func quicListener(settings, backends string) string {
	return "listeners:\n  - {name: q, handler: proxy, address: \"127.0.0.1:1\", dissector: quic, quic: {" +
		settings + "}, backends: [" + backends + "]}\n"
}

func TestQUICConfig(t *testing.T) {
	lb := "lb_configs: [\"" + testLB + "\"]"
	two := `{address: "127.0.0.1:2", server_id: "0a01"}, {address: "127.0.0.1:3", server_id: 0b02}`
	for _, tc := range []struct{ name, body string }{
		{"server IDs", quicListener(lb, two)},
		{"two configurations", quicListener("lb_configs: [\""+testLB+"\", \"rotation=1,server-id-len=2,nonce-len=8\"]", two)},
		{"no QUIC-LB", quicListener("cid_len: 8", `"127.0.0.1:2", "127.0.0.1:3"`)},
		{"no settings", "listeners:\n  - {name: q, handler: proxy, address: \"127.0.0.1:1\", dissector: quic, backends: [\"127.0.0.1:2\"]}\n"},
		{"echo", "listeners:\n  - {name: q, handler: echo, address: \"127.0.0.1:1\", dissector: quic, quic: {" + lb + "}}\n"},
		{"a longer cid_len", quicListener(lb+", cid_len: 12", two)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(writeConfig(t, tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if d := cfg.mux.Listeners[0].Dissector; fmt.Sprintf("%T", d) != "*quic.Dissector" {
				t.Errorf("dissector %T", d)
			}
		})
	}
}

func TestQUICConfigErrors(t *testing.T) {
	lb := "lb_configs: [\"" + testLB + "\"]"
	b := func(sids ...string) string {
		var bs []string
		for i, id := range sids {
			bs = append(bs, fmt.Sprintf(`{address: "127.0.0.1:%d", server_id: %s}`, 2+i, id))
		}
		return strings.Join(bs, ", ")
	}
	for _, tc := range []struct{ name, body, want string }{
		{"server IDs without the dissector", "listeners:\n  - {name: q, handler: proxy, address: \"127.0.0.1:1\", dissector: flow, backends: [" + b(`"0a01"`) + "]}\n",
			"listeners[0].backends[0].server_id: only dissector: quic routes by server IDs"},
		{"settings without the dissector", "listeners:\n  - {name: q, handler: echo, address: \"127.0.0.1:1\", quic: {cid_len: 8}}\n",
			"listeners[0].quic: only dissector: quic has these settings"},
		{"short key", quicListener(`lb_configs: ["rotation=0,server-id-len=2,nonce-len=6,key=8f95f092"]`, b(`"0a01"`)),
			`listeners[0].quic.lb_configs[0]: quiclb: key="8f95f092" is not 32 hex digits`},
		{"reserved rotation", quicListener(`lb_configs: ["rotation=7,server-id-len=2,nonce-len=6"]`, b(`"0a01"`)),
			"listeners[0].quic.lb_configs[0]: quiclb: config rotation 7 (0b111) is reserved"},
		{"rotation twice", quicListener("lb_configs: [\""+testLB+"\", \"rotation=0,server-id-len=2,nonce-len=8\"]", b(`"0a01"`)),
			"listeners[0].quic.lb_configs[1]: config rotation 0 is already that of quic.lb_configs[0]"},
		{"server ID lengths differ", quicListener("lb_configs: [\""+testLB+"\", \"rotation=1,server-id-len=3,nonce-len=8\"]", b(`"0a01"`)),
			"listeners[0].quic.lb_configs[1]: server-id-len=3, but quic.lb_configs[0] has 2"},
		{"server ID too long", quicListener(lb, b(`"0a01"`, `"0b0203"`)),
			"listeners[0].backends[1].server_id: 0b0203 has 3 octets; the QUIC-LB configurations' server IDs have 2"},
		{"server ID twice", quicListener(lb, b(`"0a01"`, `"0A01"`)),
			"listeners[0].backends[1].server_id: 0a01 is already the server ID of backends[0]"},
		{"server ID missing", quicListener(lb, b(`"0a01"`)+`, "127.0.0.1:9"`),
			"listeners[0].backends[1].server_id: missing for 127.0.0.1:9"},
		{"server IDs without QUIC-LB", quicListener("cid_len: 9", b(`"0a01"`)),
			"listeners[0].backends[0].server_id: server IDs need quic.lb_configs"},
		{"server ID unquoted", quicListener(lb, b("1234")),
			`listeners[0].backends[0].server_id: YAML read 1234, not a string of hex digits; write server IDs in quotes`},
		{"server ID not hex", quicListener(lb, b(`"0g01"`)),
			`listeners[0].backends[0].server_id: quiclb: server ID "0g01" is not hex`},
		{"cid_len too long", quicListener("cid_len: 21", `"127.0.0.1:2"`),
			"listeners[0].quic.cid_len: 21 is not within 0..20"},
		{"cid_len too short", quicListener(lb+", cid_len: 8", b(`"0a01"`)),
			"listeners[0].quic.cid_len: 8 is shorter than the 9 octets"},
		{"unknown setting", quicListener("lb_config: []", `"127.0.0.1:2"`), "lb_config"},
		{"unknown backend key", quicListener(lb, `{address: "127.0.0.1:2", server_id: "0a01", wieght: 2}`), "wieght"},
		{"backend address", quicListener(lb, `{address: "127.0.0.1", server_id: "0a01"}`), "listeners[0].backends[0]: missing port in address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want one containing %q\nconfig:\n%s", err, tc.want, tc.body)
			}
		})
	}
}
