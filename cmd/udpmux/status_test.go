//go:build linux

package main

import (
	"bytes"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
)

// TestStatusKeysAreSnakeCase: every key of `udpmux status -o json` is
// snake_case, as the config's and the metrics' are: each field of the
// report and of every type within it (the library's Stats included, which
// other programs marshal too) has a JSON tag, so that a field added without
// one fails here rather than print a Go name. Map keys are data (listener
// names, reasons) and are not checked.
func TestStatusKeysAreSnakeCase(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type, path string)
	walk = func(ty reflect.Type, path string) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || seen[ty] || ty == reflect.TypeFor[time.Time]() || ty.PkgPath() == "net/netip" {
			return
		}
		seen[ty] = true
		for f := range ty.Fields() {
			if !f.IsExported() {
				continue
			}
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && tag == "" {
				walk(f.Type, path) // its fields are the report's
				continue
			}
			if !snake.MatchString(tag) {
				t.Errorf("%s.%s (%s): JSON key %q is not snake_case", path, f.Name, ty, tag)
			}
			walk(f.Type, path+"."+tag)
		}
	}
	walk(reflect.TypeFor[statusReport](), "status")
	for _, ty := range []reflect.Type{reflect.TypeFor[mux.ListenerStats](), reflect.TypeFor[proxy.BackendStatus](), reflect.TypeFor[bgpStatus](), reflect.TypeFor[sessionLogStatus]()} {
		if !seen[ty] {
			t.Errorf("%s is not in the status report any more: check what replaced it", ty)
		}
	}
}

// TestStatusText: `udpmux status` sums the JSON up: the process, a line
// per listener with its datagrams, live sessions and drops by reason, per
// proxy backend with its health and health checks, per BGP peer, and the session log's
// counters; what a config does not have is not printed.
func TestStatusText(t *testing.T) {
	started := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	base := statusReport{PID: 42, Version: "v1.2.3", Revision: "0123abcd+modified", Started: started, Workers: 2,
		Stats: mux.Stats{Sessions: 3, Keys: 4, Capacity: 100, Listeners: []mux.ListenerStats{{
			Name: "vpn", Address: "127.0.0.1:1194", RxDatagrams: 10, TxDatagrams: 9, SessionsOpened: 5,
			SessionsClosed: map[string]uint64{"idle": 1, "closed": 1}, KernelDrops: 2, SendErrors: 1,
		}}}}
	withProxy := base
	withProxy.Proxies = map[string]proxy.Stats{"vpn": {Backends: []proxy.BackendStatus{
		{Addr: netip.MustParseAddrPort("10.0.0.2:1194"), Healthy: true, Weight: 1, Sessions: 3},
		{Addr: netip.MustParseAddrPort("10.0.0.3:1194"), Weight: 3, Downs: 2},
		{Addr: netip.MustParseAddrPort("10.0.0.4:1194"), Healthy: true, Drained: true, Weight: 1, Sessions: 1},
		{Addr: netip.MustParseAddrPort("10.0.0.5:1194"), Healthy: true, Drained: true, Retired: true, Sessions: 2},
		{Addr: netip.MustParseAddrPort("10.0.0.6:1194"), Weight: 1, Downs: 1, Check: "down", ProbesFailed: 3,
			LastFailure: &proxy.CheckFailure{Kind: "timeout", Reason: "check: no answer (timeout)", At: started.Add(time.Hour - 2*time.Second)}},
	}}}
	withBGP := base
	withBGP.BGP = &bgpStatus{Peers: []peerStatus{{Address: "10.0.1.1", AS: 65000, State: "established", BFD: "up", PrefixesSent: 1}},
		Announced: []string{"198.18.0.100/32"}, Withdrawals: map[string]uint64{"drain": 1, "shutdown": 0}}
	withLog := base
	withLog.SessionLog = &sessionLogStatus{Lines: 7, Dropped: map[string]uint64{droppedRate: 3, droppedQueueFull: 1}}
	listenerLine := regexp.MustCompile(`(?m)^vpn +127\.0\.0\.1:1194 +10 +9 +3 +5 +3 \(kernel_queue_full 2, send_error 1\)`)
	tests := []struct {
		name    string
		st      statusReport
		want    []*regexp.Regexp
		wantNot []string
	}{
		{"engine only", base, []*regexp.Regexp{
			regexp.MustCompile(`^udpmux pid 42, version v1\.2\.3 0123abcd\+modified, up 1h0m5s, 2 workers\n`),
			regexp.MustCompile(`(?m)^sessions 3 \(4 keys of 100\)`),
			listenerLine,
		}, []string{"PROXY", "BGP", "session log", "announced"}},
		{"proxy", withProxy, []*regexp.Regexp{
			listenerLine,
			regexp.MustCompile(`(?m)^vpn +10\.0\.0\.2:1194 +up +enabled +1 +3 +0 +- +- *$`),
			regexp.MustCompile(`(?m)^vpn +10\.0\.0\.3:1194 +down +enabled +3 +0 +2 +- +- *$`),
			regexp.MustCompile(`(?m)^vpn +10\.0\.0\.4:1194 +up +drained +1 +1 +0 +- +- *$`),
			regexp.MustCompile(`(?m)^vpn +10\.0\.0\.5:1194 +up +retired +0 +2 +0 +- +- *$`),
			regexp.MustCompile(`(?m)^vpn +10\.0\.0\.6:1194 +down +enabled +1 +0 +1 +down +timeout, 7\.3s ago *$`),
		}, []string{"BGP", "session log"}},
		{"bgp", withBGP, []*regexp.Regexp{
			regexp.MustCompile(`(?m)^10\.0\.1\.1 +65000 +established +up +1 *$`),
			regexp.MustCompile(`(?m)^announced: 198\.18\.0\.100/32$`),
			regexp.MustCompile(`(?m)^withdrawals: drain 1, shutdown 0$`),
		}, []string{"PROXY", "session log", "held"}},
		{"session log", withLog, []*regexp.Regexp{
			regexp.MustCompile(`(?m)^session log: 7 lines; dropped 3 for the rate, 1 for a full queue$`),
		}, []string{"PROXY", "BGP"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := writeStatusText(&out, &tc.st, started.Add(time.Hour+5*time.Second+300*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			for _, re := range tc.want {
				if !re.Match(out.Bytes()) {
					t.Errorf("no match for %s in\n%s", re, out.String())
				}
			}
			for _, s := range tc.wantNot {
				if strings.Contains(out.String(), s) {
					t.Errorf("%q in\n%s", s, out.String())
				}
			}
		})
	}
}

// TestOutputFlag: -o takes text or json, and only for status.
func TestOutputFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"status", "-s", "/nonexistent.sock", "-o", "yaml"}, `udpmux status: -o "yaml" is not one of text, json`},
		{[]string{"sessions", "-s", "/nonexistent.sock", "-o", "json"}, "udpmux sessions: -o is for udpmux status only"},
		{[]string{"validate", "-c", "x.yaml", "-o", "json"}, "udpmux validate: -o is for udpmux status only"},
	}
	for _, tc := range tests {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}

// TestDecodeStatus: the summary reads the JSON the daemon writes, and
// refuses that of a udpmux from before its keys were snake_case rather
// than print its counters as zeros.
func TestDecodeStatus(t *testing.T) {
	tests := []struct {
		name, json string
		err        string
		rx         uint64
	}{
		{"snake_case", `{"pid": 9, "listeners": [{"name": "a", "rx_datagrams": 4}]}`, "", 4},
		{"Go names", `{"pid": 9, "version": "v0.9", "Listeners": [{"Name": "a", "RxDatagrams": 4}]}`,
			"the udpmux serving (version v0.9, pid 9) is older than this command", 0},
		{"not JSON", `pid 9`, "invalid character", 0},
	}
	for _, tc := range tests {
		st, err := decodeStatus([]byte(tc.json))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v; want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || len(st.Listeners) != 1 || st.Listeners[0].RxDatagrams != tc.rx {
			t.Errorf("%s: %+v, %v", tc.name, st, err)
		}
	}
}
