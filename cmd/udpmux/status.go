//go:build linux

package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
)

// printStatusText asks the udpmux on the control socket sock for its
// status and prints a summary of it: `udpmux status` without -o json.
// The daemon answers JSON only, so that every client reads one format;
// the summary is made here.
func printStatusText(sock string, out io.Writer) error {
	var buf bytes.Buffer
	if err := request(sock, handoff.TypeStatus, nil, &buf); err != nil {
		return err
	}
	st, err := decodeStatus(buf.Bytes())
	if err != nil {
		return fmt.Errorf("control socket %s: status: %w", sock, err)
	}
	return writeStatusText(out, &st, time.Now())
}

// decodeStatus reads a status report. A udpmux from before the keys were
// snake_case (an upgrade not yet done) answers with the counters under
// their Go names, which would read as zeros: it is refused rather than
// summed up wrong.
func decodeStatus(b []byte) (statusReport, error) {
	var st statusReport
	if err := json.Unmarshal(b, &st); err != nil {
		return st, err
	}
	if bytes.Contains(b, []byte(`"RxDatagrams":`)) {
		return st, fmt.Errorf("the udpmux serving (version %s, pid %d) is older than this command and names its counters otherwise: use udpmux status -o json", st.Version, st.PID)
	}
	return st, nil
}

// writeStatusText writes the summary of st at now: the process, then a
// line per listener (datagrams each way, live sessions, drops by reason),
// per proxy backend (health, drained or retired, weight, sessions, health
// checks), per BGP peer, and the session log's counters. Every counter is in `udpmux status -o json`.
func writeStatusText(out io.Writer, st *statusReport, now time.Time) error {
	rev := ""
	if st.Revision != "" {
		rev = " " + st.Revision
	}
	fmt.Fprintf(out, "udpmux pid %d, version %s%s, up %s, %d workers\n",
		st.PID, st.Version, rev, now.Sub(st.Started).Truncate(time.Second), st.Workers)
	fmt.Fprintf(out, "sessions %d (%d keys of %d); at takeover restored %d, relayed %d; handler panics %d\n",
		st.Sessions, st.Keys, st.Capacity, st.Restored, st.Relayed, st.HandlerPanics)

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nLISTENER\tADDRESS\tRX\tTX\tSESSIONS\tOPENED\tDROPS\t")
	for i := range st.Listeners {
		l := &st.Listeners[i]
		var closed uint64
		for _, n := range l.SessionsClosed {
			closed += n
		}
		var total uint64
		var why []string
		for _, d := range drops(l) {
			if d.n > 0 {
				total += d.n
				why = append(why, fmt.Sprintf("%s %d", d.reason, d.n))
			}
		}
		dropText := fmt.Sprint(total)
		if len(why) > 0 {
			dropText += " (" + strings.Join(why, ", ") + ")"
		}
		// The counters are read one by one while sessions open and end:
		// a session ended since its opening was read is no reason to
		// print a negative number.
		live := l.SessionsOpened - min(closed, l.SessionsOpened)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t\n", l.Name, l.Address, l.RxDatagrams, l.TxDatagrams, live, l.SessionsOpened, dropText)
	}
	if len(st.Proxies) > 0 {
		fmt.Fprintln(tw, "\nPROXY\tBACKEND\tHEALTH\tSTATE\tWEIGHT\tSESSIONS\tDOWNS\tCHECK\tLAST PROBE FAILURE\t")
		for _, name := range slices.Sorted(maps.Keys(st.Proxies)) {
			for _, b := range st.Proxies[name].Backends {
				health := "up"
				if !b.Healthy {
					health = "down"
				}
				state := "enabled"
				switch {
				case b.Retired:
					state = "retired" // no longer configured: drained for good
				case b.Drained:
					state = "drained"
				}
				// The active checks' own verdict, and why and how long ago
				// a probe last failed: "-" without checks or failures.
				last := "-"
				if f := b.LastFailure; f != nil {
					last = fmt.Sprintf("%s, %s ago", f.Kind, now.Sub(f.At).Truncate(100*time.Millisecond))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t\n", name, b.Addr, health, state, b.Weight, b.Sessions, b.Downs, cmp.Or(b.Check, "-"), last)
			}
		}
	}
	if b := st.BGP; b != nil {
		fmt.Fprintln(tw, "\nBGP PEER\tAS\tSTATE\tBFD\tPREFIXES SENT\t")
		for _, p := range b.Peers {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t\n", p.Address, p.AS, p.State, cmp.Or(p.BFD, "-"), p.PrefixesSent)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if b := st.BGP; b != nil {
		if b.PeersError != "" {
			fmt.Fprintf(out, "bgp peers unknown: %s\n", b.PeersError)
		}
		fmt.Fprintf(out, "announced: %s\n", cmp.Or(strings.Join(b.Announced, ", "), "none"))
		var ws []string
		for _, r := range slices.Sorted(maps.Keys(b.Withdrawals)) {
			ws = append(ws, fmt.Sprintf("%s %d", r, b.Withdrawals[r]))
		}
		fmt.Fprintf(out, "withdrawals: %s\n", cmp.Or(strings.Join(ws, ", "), "none"))
		if b.Held != "" {
			fmt.Fprintf(out, "announcements held: %s\n", b.Held)
		}
	}
	if sl := st.SessionLog; sl != nil {
		fmt.Fprintf(out, "session log: %d lines; dropped %d for the rate, %d for a full queue\n",
			sl.Lines, sl.Dropped[droppedRate], sl.Dropped[droppedQueueFull])
	}
	_, err := fmt.Fprintln(out, "(udpmux status -o json: every counter)")
	return err
}
