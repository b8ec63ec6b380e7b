//go:build linux

package mux

// Other goroutines and loops reach a loop through its poller's wake-up
// (udpsys.Poller.Wake): datagrams
// forwarded to it (forward.go), Conns' writes (connwrite.go), closes asked
// for anywhere, a handoff's pause and early copy.

// onWake serves what other goroutines and loops left for this loop.
func (l *loop) onWake() {
	l.drainQueues()
	l.ctlMu.Lock()
	reqs, pause, track := l.ctl, l.pause, l.track
	l.ctl, l.pause, l.track = nil, nil, nil
	l.ctlMu.Unlock()
	for _, r := range reqs {
		l.end(r.s, r.r)
	}
	l.serveRestart(track, pause)
}

// drainQueues serves the loop's lock-free queues: datagrams other loops
// forwarded, then what Conns wrote, before any close asked for since, so
// that a Conn's last writes go out before its session ends.
func (l *loop) drainQueues() {
	l.in.drain(l.deliver, &l.inflight)
	if l.sendConnWrites() {
		l.signal() // the rest next round
	}
}

func (l *loop) requestPause(p *pauseRequest) {
	l.ctlMu.Lock()
	l.pause = p
	l.ctlMu.Unlock()
	l.signal()
}

// request queues a close for this loop from any goroutine.
func (l *loop) request(r closeRequest) {
	l.ctlMu.Lock()
	l.ctl = append(l.ctl, r)
	l.ctlMu.Unlock()
	l.signal()
}

func (l *loop) signal() { l.poll.Wake() }
