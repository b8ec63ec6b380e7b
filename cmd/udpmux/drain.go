//go:build linux

package main

import (
	"fmt"
	"strings"
	"time"
)

// drainPoll is how often a draining process looks at its listeners'
// receive counters.
const drainPoll = 100 * time.Millisecond

// drain serves `udpmux drain`: it withdraws the VIPs, so that the routers
// send their flows to the other hosts of the fleet, which recover the
// sessions (see proxy.RecoveryConfig); this process serves what still
// arrives while the routers converge, and exits when bgp.drain_timeout
// passes or its announced listeners have received nothing for
// bgp.drain_quiet. It returns the reply.
func (c *control) drain() []byte {
	if c.ann == nil {
		return []byte("udpmux drain: this udpmux announces nothing (no bgp section); stop it with SIGTERM\n")
	}
	if held := c.ann.holding(); held != "" && held != reasonDrain {
		return fmt.Appendf(nil, "udpmux drain: the announcements are %s already\n", held)
	}
	c.ann.withdrawAll(reasonDrain)
	f := c.cfg.fleet
	var vips []string
	for _, p := range c.ann.prefixes {
		vips = append(vips, p.route.Prefix.String())
	}
	if c.draining.CompareAndSwap(false, true) {
		go c.awaitQuiet(time.Now())
	}
	return fmt.Appendf(nil, "withdrawn %s; serving until nothing arrives for %v, at most %v\n",
		strings.Join(vips, ", "), f.drainQuiet, f.drainTimeout)
}

// awaitQuiet ends Serve once the drain that began at start is over.
func (c *control) awaitQuiet(start time.Time) {
	f := c.cfg.fleet
	last, quietSince := c.announcedRx(), start
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for now := range t.C {
		if rx := c.announcedRx(); rx != last {
			last, quietSince = rx, now
		}
		switch {
		case now.Sub(quietSince) >= f.drainQuiet:
			c.log.Info("drained: the announced listeners are quiet; exiting", "quiet", f.drainQuiet, "took", now.Sub(start))
		case now.Sub(start) >= f.drainTimeout:
			c.log.Warn("drain timeout: exiting with datagrams still arriving", "drain_timeout", f.drainTimeout)
		default:
			continue
		}
		c.stopServing()
		return
	}
}

// announcedRx returns the datagrams the listeners that announce have
// received.
func (c *control) announcedRx() uint64 {
	st := c.srv.Stats()
	var n uint64
	for _, v := range c.cfg.fleet.vips {
		n += st.Listeners[v.listener].RxDatagrams
	}
	return n
}
