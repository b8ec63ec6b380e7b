//go:build linux

package mux

import (
	"slices"
	"testing"
)

// TestLoopRestartWithoutSockets: a loop's hook into a restart, on a fake
// poller: it notes nothing until a restart's early copy asks it to, then
// each changed session once per generation, hands its list over when the
// next request comes, and pauses between batches when asked.
func TestLoopRestartWithoutSockets(t *testing.T) {
	h := &loopRecorder{}
	l, p := newFakeLoop(t, h, dropEmpty{})
	ls := l.socks[0]
	m := message("198.51.100.1:1000", "before")
	l.dispatch(ls, &m)
	if len(l.restart.changed) != 0 {
		t.Fatal("a change noted with no restart under way")
	}
	serveWith := func(track *trackRequest, pause *pauseRequest) {
		l.ctlMu.Lock()
		l.track, l.pause = track, pause
		l.ctlMu.Unlock()
		p.waits = []fakeWait{{woken: true}}
		if err := l.serveEvents(); err != nil {
			t.Fatal(err)
		}
	}
	lists := make(chan []*sess, 1)
	serveWith(&trackRequest{gen: 7, changed: lists}, nil)
	if got := <-lists; len(got) != 0 {
		t.Fatalf("first list %v", got)
	}
	for _, d := range []string{"one", "two"} {
		m := message("198.51.100.1:1000", d)
		l.dispatch(ls, &m)
	}
	var s *sess
	l.srv.eachSession(func(x *sess) bool { s = x; return false })
	l.restart.socketChanged(s)
	if !slices.Equal(l.restart.changed, []*sess{s}) || !s.restart.recopy.Load() {
		t.Fatalf("changed %v, recopy %v: want the session once, to copy again", l.restart.changed, s.restart.recopy.Load())
	}
	paused, resume := make(chan struct{}, 1), make(chan struct{})
	close(resume)
	serveWith(&trackRequest{gen: 8, changed: lists}, &pauseRequest{paused: paused, resume: resume})
	if got := <-lists; !slices.Equal(got, []*sess{s}) || l.restart.gen != 8 || len(l.restart.changed) != 0 {
		t.Errorf("handed over %v, now generation %d with %d listed", got, l.restart.gen, len(l.restart.changed))
	}
	select {
	case <-paused:
	default:
		t.Error("the loop did not pause")
	}
}
