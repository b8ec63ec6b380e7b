//go:build linux

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// TestSessionLogBounds: the session log writes a line per session that
// ends within log.sessions_rate and its burst, counts the others dropped
// for the rate, counts those that find the queue full (the writer stuck)
// dropped for it, and neither writes nor counts a session handed to a
// successor. The clock is the test's: the counts are exact.
func TestSessionLogBounds(t *testing.T) {
	type end struct {
		at     time.Duration // on the limit's clock
		n      int           // sessions ending then
		reason session.Reason
	}
	tests := []struct {
		name        string
		rate, burst int
		// stuck keeps the writer from writing until every session has
		// ended; otherwise it writes what is queued before the clock
		// moves on.
		stuck                bool
		ends                 []end
		lines, rated, queued uint64
	}{
		{name: "within the burst", rate: 1, burst: 3, ends: []end{{0, 3, session.ReasonIdle}}, lines: 3},
		{name: "beyond the burst", rate: 1, burst: 3, ends: []end{{0, 5, session.ReasonIdle}}, lines: 3, rated: 2},
		{name: "the rate refills", rate: 2, burst: 2, ends: []end{{0, 4, session.ReasonClosed}, {time.Second, 4, session.ReasonShutdown}},
			lines: 4, rated: 4},
		{name: "handoffs are no ends", rate: 1, burst: 1, ends: []end{{0, 5, session.ReasonHandoff}, {0, 1, session.ReasonError}}, lines: 1},
		{name: "queue full", rate: 1, burst: 2, stuck: true, ends: []end{{0, 2, session.ReasonIdle}, {time.Second, 1, session.ReasonIdle}},
			lines: 2, queued: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			lc := []mux.ListenerConfig{{Name: "echo", Handler: session.Echo{}}}
			sl := newSessionLog(sessionLogConfig{rate: tc.rate, burst: tc.burst}, lc, slog.New(slog.NewJSONHandler(&out, nil)))
			var now time.Duration
			sl.clock = func() int64 { return int64(now) }
			loop := &sessiontest.Loop{Handler: session.Echo{}}
			port := uint16(1000)
			for _, e := range tc.ends {
				// The test is the writer until the end, so that what it
				// has written when the clock moves is known.
				for !tc.stuck && len(sl.queue) > 0 {
					sl.write(<-sl.queue)
				}
				now = e.at
				for range e.n {
					port++
					s, err := loop.Open(netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port))
					if err != nil {
						t.Fatal(err)
					}
					sl.ended(s, e.reason)
				}
			}
			go sl.run()
			sl.close()
			st := sl.status()
			if st.Lines != tc.lines || st.Dropped[droppedRate] != tc.rated || st.Dropped[droppedQueueFull] != tc.queued {
				t.Errorf("lines %d, dropped %v; want %d lines, %d for the rate, %d for the queue", st.Lines, st.Dropped, tc.lines, tc.rated, tc.queued)
			}
			if n := strings.Count(out.String(), `"msg":"session ended"`); uint64(n) != tc.lines {
				t.Errorf("%d lines in the log, %d counted:\n%s", n, tc.lines, out.String())
			}
		})
	}
}

// TestSessionLogLine: a line names the listener, the client and the
// address it wrote to, "-" for the backend and upstream of a session that
// is not a proxy's, the session's keys, when it began and how long it
// lasted, the datagrams and bytes each way and why it ended.
func TestSessionLogLine(t *testing.T) {
	var out bytes.Buffer
	lc := []mux.ListenerConfig{{Name: "other"}, {Name: "echo", Handler: session.Echo{}}}
	sl := newSessionLog(sessionLogConfig{rate: 10, burst: 10}, lc, slog.New(slog.NewJSONHandler(&out, nil)))
	go sl.run()
	began := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	loop := &sessiontest.Loop{Handler: session.Echo{}, Scope: 1, Now: func() time.Time { return began }}
	client := netip.MustParseAddrPort("198.51.100.7:4000")
	s, err := loop.Open(client)
	if err != nil {
		t.Fatal(err)
	}
	s.Deliver(client, []byte("abc"))
	s.Deliver(client, []byte("de"))
	sl.ended(s, session.ReasonIdle)
	sl.close()
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	want := map[string]any{
		"msg": "session ended", "listener": "echo", "client": client.String(), "local": "192.0.2.1:9000",
		"backend": "-", "upstream": "-", "keys": "1/192.0.2.1:9000-198.51.100.7:4000",
		"start": "2026-12-01T10:00:00Z", "rx_datagrams": 2.0, "rx_bytes": 5.0, "tx_datagrams": 2.0, "tx_bytes": 5.0,
		"reason": "idle",
	}
	for k, v := range want {
		if fmt.Sprint(line[k]) != fmt.Sprint(v) {
			t.Errorf("%s: %v; want %v", k, line[k], v)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < float64(time.Since(began).Milliseconds()-60_000) {
		t.Errorf("duration_ms %v; want the time since %v", line["duration_ms"], began)
	}
}

// jsonDaemon is the daemon binary running with log.format: json, its log
// lines decoded as they come.
type jsonDaemon struct {
	cmd   *exec.Cmd
	lines chan map[string]any
	// later are the lines read that next has not returned yet, in order.
	later []map[string]any
	seen  strings.Builder // every line read so far
}

// startJSONDaemon runs bin with the config file cfg, which must set
// log.format: json; the daemon is killed when the test ends if still
// running.
func startJSONDaemon(t *testing.T, bin, cfg string) *jsonDaemon {
	t.Helper()
	d := &jsonDaemon{cmd: exec.Command(bin, "-c", cfg), lines: make(chan map[string]any, 1024)}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	go func() {
		defer close(d.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line map[string]any
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				line = map[string]any{"msg": "(not JSON)", "text": sc.Text()}
			}
			d.lines <- line
		}
	}()
	return d
}

// next returns the first log line not returned yet with message msg for
// which match (if not nil) holds, failing the test if none comes within
// 15 s or the daemon's log ends.
func (d *jsonDaemon) next(t *testing.T, msg string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	is := func(line map[string]any) bool { return line["msg"] == msg && (match == nil || match(line)) }
	for i, line := range d.later {
		if is(line) {
			d.later = append(d.later[:i], d.later[i+1:]...)
			return line
		}
	}
	timeout := time.After(15 * time.Second)
	for {
		select {
		case line, ok := <-d.lines:
			if !ok {
				t.Fatalf("the daemon's log ended before a %q line; it said:\n%s", msg, d.seen.String())
			}
			fmt.Fprintf(&d.seen, "%v\n", line)
			if is(line) {
				return line
			}
			d.later = append(d.later, line)
		case <-timeout:
			t.Fatalf("no %q line within 15s; the daemon said:\n%s", msg, d.seen.String())
		}
	}
}

// of matches the log lines of one listener.
func of(listener string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["listener"] == listener }
}

// checkLine checks the fields of a log line against want, numbers as
// JSON decodes them (float64).
func checkLine(t *testing.T, line map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if fmt.Sprint(line[k]) != fmt.Sprint(v) {
			t.Errorf("%v: %s is %v; want %v", line["listener"], k, line[k], v)
		}
	}
}

// TestSessionLogOverRealSockets runs the daemon with log.sessions and
// log.format: json: an echo session that goes idle and a proxy session that
// the shutdown ends each get one line, whose addresses, keys, counts and
// reason are what the clients and the backend saw; status (text and JSON)
// and the metrics count the lines.
func TestSessionLogOverRealSockets(t *testing.T) {
	bin := buildDaemon(t)
	backend, seen := echoBackend(t)
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	d := startJSONDaemon(t, bin, writeConfig(t, "workers: 1\ncontrol: {socket: "+sock+"}\nmetrics: {address: \"127.0.0.1:0\"}\n"+
		"log: {format: json, sessions: true}\nlisteners:\n"+
		"  - {name: echo, handler: echo, address: \"127.0.0.1:0\", idle_timeout: 1s}\n"+
		"  - {name: vpn, handler: proxy, address: \"127.0.0.1:0\", backends: [\""+backend.LocalAddr().String()+"\"]}\n"))
	echoAddr := d.next(t, "listening", of("echo"))["address"].(string)
	vpnAddr := d.next(t, "listening", of("vpn"))["address"].(string)
	metricsAddr := d.next(t, "metrics", nil)["address"].(string)

	began := time.Now()
	c, err := net.Dial("udp4", echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoOnce(t, c, "abc")
	echoOnce(t, c, "defgh")
	line := d.next(t, "session ended", of("echo"))
	checkLine(t, line, map[string]any{
		"client": c.LocalAddr(), "local": echoAddr, "backend": "-", "upstream": "-",
		"keys":         "0/" + echoAddr + "-" + c.LocalAddr().String(),
		"rx_datagrams": 2, "rx_bytes": 8, "tx_datagrams": 2, "tx_bytes": 8, "reason": "idle",
	})
	start, err := time.Parse(time.RFC3339Nano, fmt.Sprint(line["start"]))
	if err != nil || start.Before(began.Add(-time.Second)) || start.After(time.Now()) {
		t.Errorf("start %v (%v); want the session's first datagram, after %v", line["start"], err, began)
	}
	if ms, _ := line["duration_ms"].(float64); ms < 1000 || ms > float64(time.Since(began).Milliseconds()) {
		t.Errorf("duration_ms %v; want the 1 s idle timeout and at most the test's %v", line["duration_ms"], time.Since(began))
	}

	js, err := exec.Command(bin, "status", "-s", sock, "-o", "json").Output()
	if err != nil {
		t.Fatalf("udpmux status -o json: %v", err)
	}
	var st struct {
		Listeners []struct {
			Name        string `json:"name"`
			RxDatagrams uint64 `json:"rx_datagrams"`
		} `json:"listeners"`
		Proxies    map[string]struct{ Backends []struct{ Healthy bool } } `json:"proxies"`
		SessionLog *sessionLogStatus                                      `json:"session_log"`
	}
	if err := json.Unmarshal(js, &st); err != nil {
		t.Fatalf("udpmux status -o json: %v\n%s", err, js)
	}
	if len(st.Listeners) != 2 || st.Listeners[0].Name != "echo" || st.Listeners[0].RxDatagrams != 2 || len(st.Proxies["vpn"].Backends) != 1 ||
		st.SessionLog == nil || st.SessionLog.Lines != 1 || st.SessionLog.Dropped[droppedRate] != 0 {
		t.Errorf("udpmux status -o json:\n%s", js)
	}
	text, err := exec.Command(bin, "status", "-s", sock).Output()
	if err != nil || !regexp.MustCompile(`(?m)^echo +`+regexp.QuoteMeta(echoAddr)+` +2 +2 +0 +1 +0 *$`).Match(text) ||
		!strings.Contains(string(text), "session log: 1 lines; dropped 0 for the rate, 0 for a full queue") {
		t.Errorf("udpmux status (%v):\n%s", err, text)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"udpmux_session_log_lines_total 1\n", `udpmux_session_log_dropped_total{reason="rate"} 0`, `udpmux_session_log_dropped_total{reason="queue_full"} 0`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	v, err := net.Dial("udp4", vpnAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	echoOnce(t, v, "xyz")
	upstream := <-seen
	d.cmd.Process.Signal(syscall.SIGTERM)
	checkLine(t, d.next(t, "session ended", of("vpn")), map[string]any{
		"client": v.LocalAddr(), "local": vpnAddr, "backend": backend.LocalAddr(), "upstream": upstream,
		"keys":         "1/" + vpnAddr + "-" + v.LocalAddr().String(),
		"rx_datagrams": 1, "rx_bytes": 3, "tx_datagrams": 1, "tx_bytes": 3, "reason": "shutdown",
	})
	checkLine(t, d.next(t, "session log stopped", nil), map[string]any{"lines": 2, "dropped_rate": 0, "dropped_queue_full": 0})
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// TestSessionLogRateOverRealSockets: with log.sessions_rate 1 and
// log.sessions_burst 2, the shutdown of five sessions, which ends them all
// within microseconds, logs two lines and counts three dropped.
func TestSessionLogRateOverRealSockets(t *testing.T) {
	const sessions, burst = 5, 2
	bin := buildDaemon(t)
	d := startJSONDaemon(t, bin, writeConfig(t, "workers: 1\ncontrol: {socket: "+filepath.Join(t.TempDir(), "ctl.sock")+"}\n"+
		"log: {format: json, sessions: true, sessions_rate: 1, sessions_burst: 2}\n"+
		"listeners:\n  - {name: echo, handler: echo, address: \"127.0.0.1:0\"}\n"))
	addr := d.next(t, "listening", of("echo"))["address"].(string)
	for i := range sessions {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoOnce(t, c, fmt.Sprint(i))
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	for range burst {
		checkLine(t, d.next(t, "session ended", nil), map[string]any{"listener": "echo", "reason": "shutdown", "rx_datagrams": 1})
	}
	// The summary comes after every line the log wrote: none in between.
	final := d.next(t, "session log stopped", nil)
	if strings.Count(d.seen.String(), "session ended") != burst {
		t.Errorf("want %d session lines; the daemon said:\n%s", burst, d.seen.String())
	}
	checkLine(t, final, map[string]any{"lines": burst, "dropped_rate": sessions - burst, "dropped_queue_full": 0})
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}
