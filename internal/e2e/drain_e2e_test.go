//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestOpenVPNDrainKeepsTunnels drains one of two OpenVPN backends with
// `udpmux backend drain` while real tunnels through udpmux carry a
// continuous ping each, and checks: no new client lands on the drained
// backend, before or after an upgrade (SIGUSR2), which keeps it drained;
// every tunnel on it keeps working, undisturbed (no renegotiation, no
// restart), from the source address its backend knew, and lost at most 2 %
// of its pings.
func TestOpenVPNDrainKeepsTunnels(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	v, d, ups := startProxyLab(t, fmt.Sprintf("control:\n  socket: %q\n  handoff_timeout: 10s\n", sock))
	drained := v.servers[0]
	var kept []upResult
	for _, u := range ups {
		if u.server == drained {
			kept = append(kept, u)
		}
	}
	before := v.checkServers(ups, viaProxy)
	pings := make([]*contPing, len(kept))
	for i, u := range kept {
		pings[i] = startContPing(t, v.lab, u)
	}
	time.Sleep(pingWarmup)
	out, err := exec.Command(udpmuxBinary(t), "backend", "drain", "-s", sock, "vpn", drained.Listen.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("udpmux backend drain: %v\n%s", err, out)
	}
	t.Logf("udpmux backend drain: %s", out)

	remote := func(int) netip.AddrPort { return muxListen }
	avoid := func(when string, ups []upResult) {
		t.Helper()
		for _, u := range ups {
			if u.server == drained {
				t.Errorf("%s: new client %s landed on drained %s", when, u.client.Name, drained.Name)
			}
		}
	}
	more := v.waitUp(v.addClients(clientBatch, remote))
	avoid("drained", more)
	u := d.Upgrade(t, sock, len(ups)+len(more), v.wait(upgradeTimeout))
	t.Logf("upgrade: pid %d -> %d, %d sessions restored", u.From, u.To, u.Restored)
	st, err := daemonStatus(sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Proxies["vpn"].Backends {
		if b.Addr == drained.Listen && (!b.Drained || b.Sessions != int64(len(kept))) {
			t.Errorf("after the upgrade: %+v; want drained, with its %d sessions", b, len(kept))
		}
	}
	evenMore := v.waitUp(v.addClients(clientBatch/2, remote))
	avoid("after the upgrade", evenMore)
	time.Sleep(pingSettle)
	stopPings(t, pings, kept, "the drain and the upgrade")

	all := append(append(ups, more...), evenMore...)
	v.pingAll(all)
	checkClientsUndisturbed(t, kept)
	after := v.checkServers(all, viaProxy)
	was := map[string]string{}
	for _, r := range before[drained] {
		was[r.CommonName] = r.Real.String()
	}
	if len(after[drained]) != len(kept) {
		t.Errorf("%s lists %d clients after the drain; want its %d", drained.Name, len(after[drained]), len(kept))
	}
	for _, r := range after[drained] {
		if was[r.CommonName] != r.Real.String() {
			t.Errorf("%s: lists %s from %v after the drain; it came from %q before", drained.Name, r.CommonName, r.Real, was[r.CommonName])
		}
	}
	d.Stop(t)
	t.Logf("drain: %d tunnels kept on %s, %d new ones elsewhere", len(kept), drained.Name, len(more)+len(evenMore))
}
