//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// Parameters of TestOpenVPNSurvivesUpgrade.
const (
	upgrades        = 3
	upgradeTimeout  = 15 * time.Second       // per upgrade: SIGUSR2 until the predecessor has exited
	upgradeGap      = 300 * time.Millisecond // traffic between two upgrades
	pingInterval    = "0.05"                 // seconds between a continuous ping's echo requests
	pingWarmup      = 500 * time.Millisecond // continuous pings before the first upgrade
	pingSettle      = time.Second            // and after the last
	maxLossPerMille = 20                     // 2 %
)

// TestOpenVPNSurvivesUpgrade upgrades udpmux (SIGUSR2: it starts its own
// binary, which takes over every socket and session over the control socket)
// three times in a row while real OpenVPN tunnels through it carry a
// continuous ping each, and checks that nothing noticed: each upgrade
// restores every session; every tunnel still works afterwards; no OpenVPN
// client renegotiated, restarted or timed out; each backend still lists each
// client from the same source address:port as before (udpmux kept each
// session's upstream socket), and udpmux holds exactly those sockets; and
// the continuous pings lost at most 2 % (an upgrade pauses udpmux for tens
// of milliseconds, so any loss at all is worth a look).
func TestOpenVPNSurvivesUpgrade(t *testing.T) {
	start := time.Now()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	v, d, ups := startProxyLab(t, fmt.Sprintf("control:\n  socket: %q\n  handoff_timeout: 10s\n", sock))
	before := v.checkServers(ups, viaProxy)
	v.checkUpstreamSockets(before)
	if t.Failed() {
		t.FailNow()
	}
	st, err := daemonStatus(sock)
	if err != nil {
		t.Fatalf("udpmux status before the upgrades: %v", err)
	}
	if st.PID != d.PID() {
		t.Fatalf("control socket %s answered with pid %d; udpmux runs as %d", sock, st.PID, d.PID())
	}
	t.Logf("before the upgrades: udpmux pid %d, %d sessions", st.PID, len(ups))

	pings := make([]*contPing, len(ups))
	for i, u := range ups {
		pings[i] = startContPing(t, v.lab, u)
	}
	time.Sleep(pingWarmup)
	pids := []int{st.PID}
	for n := range upgrades {
		u := d.Upgrade(t, sock, len(ups), v.wait(upgradeTimeout))
		pids = append(pids, u.To)
		t.Logf("upgrade %d: pid %d -> %d, %d sessions restored, predecessor gone %v after SIGUSR2",
			n+1, u.From, u.To, u.Restored, u.Took.Round(time.Millisecond))
		if n < upgrades-1 {
			time.Sleep(upgradeGap)
		}
	}
	time.Sleep(pingSettle)
	stopPings(t, pings, ups, "the upgrades")

	v.pingAll(ups)
	checkClientsUndisturbed(t, ups)
	after := v.checkServers(ups, viaProxy)
	for s, rows := range before {
		was := map[string]string{}
		for _, r := range rows {
			was[r.CommonName] = r.Real.String()
		}
		for _, r := range after[s] {
			if was[r.CommonName] != r.Real.String() {
				t.Errorf("%s: lists %s from %v after the upgrades; it came from %s before", s.Name, r.CommonName, r.Real, was[r.CommonName])
			}
		}
	}
	v.checkUpstreamSockets(after)
	checkHandoffLog(t, d, len(ups))
	if out, err := exec.Command(udpmuxBinary(t), "sessions", "-s", sock).CombinedOutput(); err != nil {
		t.Errorf("udpmux sessions -s %s: %v\n%s", sock, err, out)
	} else if n := strings.Count(strings.TrimSpace(string(out)), "\n"); n != len(ups) {
		t.Errorf("udpmux sessions lists %d sessions after the upgrades; want %d:\n%s", n, len(ups), out)
	}
	d.Stop(t)
	t.Logf("upgrade: %d tunnels through %d upgrades (pids %v) in %v", len(ups), upgrades, pids, time.Since(start).Round(time.Millisecond))
}

// stopPings stops the continuous pings of ups and checks that each lost
// at most maxLossPerMille of its echo requests during what.
func stopPings(t *testing.T, pings []*contPing, ups []upResult, what string) {
	t.Helper()
	for _, p := range pings {
		p.stop()
	}
	for i, p := range pings {
		r, err := p.result()
		if err != nil {
			t.Errorf("%s: continuous ping: %v", ups[i].client.Name, err)
			continue
		}
		t.Logf("%s (%s): continuous ping of %v during %s: %d sent, %d answered, %d lost%s",
			ups[i].client.Name, ups[i].server.Name, ups[i].server.Gateway, what, r.sent, r.answered, len(r.lost), r.describeLost())
		if len(r.lost)*1000 > r.sent*maxLossPerMille || r.sent == 0 {
			t.Errorf("%s: continuous ping lost %d of %d echo requests (seq %v); want at most %d‰",
				ups[i].client.Name, len(r.lost), r.sent, r.lost, maxLossPerMille)
		}
	}
}

// contPing is a continuous ping from a client over its tunnel to its
// backend's tunnel address.
type contPing struct {
	proc *netlab.Process
	out  bytes.Buffer
}

func startContPing(t *testing.T, lab *netlab.Lab, u upResult) *contPing {
	t.Helper()
	p := &contPing{}
	// -c bounds a ping the test fails to stop; stop ends it long before.
	cmd := u.client.NS.Command("ping", "-n", "-i", pingInterval, "-W", "1", "-c", "100000", "-I", clientDev, u.server.Gateway.String())
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	p.proc = lab.Start(cmd)
	return p
}

// stop interrupts the ping (it prints its summary on SIGINT).
func (p *contPing) stop() {
	p.proc.Cmd.Process.Signal(syscall.SIGINT)
}

var icmpSeqRE = regexp.MustCompile(`(?m)icmp_seq=(\d+) `)

// pingResult counts one continuous ping's echo requests.
type pingResult struct {
	sent, answered int
	lost           []int // sequence numbers never answered
}

// result waits for the stopped ping and parses its output. The last echo
// request may still have been in flight at the SIGINT, so if it went
// unanswered it counts neither as sent nor as lost.
func (p *contPing) result() (pingResult, error) {
	var r pingResult
	select {
	case <-p.proc.Done():
	case <-time.After(5 * time.Second):
		return r, fmt.Errorf("ping did not exit after SIGINT")
	}
	out := p.out.String()
	m := pingRecvRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no summary in ping's output (%v):\n%s", p.proc.Wait(), out)
	}
	r.sent, _ = strconv.Atoi(m[1])
	seen := map[int]bool{}
	for _, m := range icmpSeqRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		seen[n] = true
	}
	r.answered = len(seen)
	for seq := 1; seq < r.sent; seq++ { // not the last one: see above
		if !seen[seq] {
			r.lost = append(r.lost, seq)
		}
	}
	if !seen[r.sent] {
		r.sent-- // in flight when ping was stopped
	}
	return r, nil
}

func (r pingResult) describeLost() string {
	if len(r.lost) == 0 {
		return ""
	}
	return fmt.Sprintf(" (seq %v)", r.lost)
}

// checkClientsUndisturbed checks every client's log for a tunnel that was
// set up once and never restarted or renegotiated: one "Initialization
// Sequence Completed", no restart on SIGUSR1 (OpenVPN's soft restart, e.g.
// after a ping timeout), no inactivity timeout (--ping-restart) and no TLS
// soft reset (a renegotiation of the data channel keys). The pushed
// "ping-restart 60" option itself does not count.
func checkClientsUndisturbed(t *testing.T, ups []upResult) {
	t.Helper()
	checkClientLogs(t, ups, false)
}

// checkClientLogs is checkClientsUndisturbed, but with reneg it lets the
// clients renegotiate their data channel keys (TLS soft resets: the test
// set a short --reneg-sec); a restart or a second initialisation still
// counts.
func checkClientLogs(t *testing.T, ups []upResult, reneg bool) {
	t.Helper()
	for _, u := range ups {
		log, err := readFile(u.client.Log)
		if err != nil {
			t.Error(err)
			continue
		}
		if n := strings.Count(log, initDone); n != 1 {
			t.Errorf("%s: log shows %q %d times; want once (the tunnel was set up again)", u.client.Name, initDone, n)
		}
		for _, bad := range []string{"SIGUSR1", "Inactivity timeout", "(--ping-restart)", "process restarting", "soft reset"} {
			if reneg && bad == "soft reset" {
				continue
			}
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, bad) {
					t.Errorf("%s: log shows a restart: %s", u.client.Name, line)
				}
			}
		}
	}
}

var tookOverRE = regexp.MustCompile(`took over from predecessor" sessions_restored=(\d+) sessions_dropped=(\d+)`)

// checkHandoffLog checks udpmux's own account of the upgrades: every
// generation but the last handed over, every successor took over with all
// sessions and dropped none, and no handoff failed.
func checkHandoffLog(t *testing.T, d *daemon, sessions int) {
	t.Helper()
	data, err := os.ReadFile(d.Log)
	if err != nil {
		t.Error(err)
		return
	}
	log := string(data)
	var lines []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "handed over") || strings.Contains(line, "took over") || strings.Contains(line, "handoff") {
			lines = append(lines, line)
		}
	}
	t.Logf("udpmux handoff log:\n%s", strings.Join(lines, "\n"))
	if n := strings.Count(log, "handed over to successor"); n != upgrades {
		t.Errorf("udpmux log shows %d handovers; want %d", n, upgrades)
	}
	if n := strings.Count(log, "took over from predecessor"); n != upgrades {
		t.Errorf("udpmux log shows %d takeovers; want %d", n, upgrades)
	}
	for _, m := range tookOverRE.FindAllStringSubmatch(log, -1) {
		if restored, _ := strconv.Atoi(m[1]); restored != sessions || m[2] != "0" {
			t.Errorf("udpmux log: a successor restored %s sessions and dropped %s; want %d and 0", m[1], m[2], sessions)
		}
	}
	if strings.Contains(log, "handoff failed") || strings.Contains(log, "handoff refused") {
		t.Errorf("udpmux log shows a failed or refused handoff")
	}
}
