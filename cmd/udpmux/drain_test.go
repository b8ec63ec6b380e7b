//go:build linux

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// statefulHandler keeps each session's datagram count in itself and is no
// session.Migrator, as an embedding application's handler may be.
type statefulHandler struct {
	name   string
	mu     sync.Mutex
	counts map[session.Session]int
}

func (h *statefulHandler) Open(session.Session) error { return nil }

func (h *statefulHandler) Datagram(s session.Session, _ []byte) {
	h.mu.Lock()
	h.counts[s]++
	n := h.counts[s]
	h.mu.Unlock()
	s.Write(fmt.Appendf(nil, "%s %d", h.name, n))
}

func (h *statefulHandler) Close(s session.Session, _ session.Reason) {
	h.mu.Lock()
	delete(h.counts, s)
	h.mu.Unlock()
}

// syncBuffer is a log both processes' halves may write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestHandoffDrainsRetainedSessions runs the daemon's handoff, control
// socket and all, between two servers in this process whose handler cannot
// export its sessions: the owner sends relay sockets with its state, keeps
// serving the sessions it had, stops answering on the control socket, and
// stops when the drain timeout has passed; the successor serves new clients
// from the start and the retained ones after that.
func TestHandoffDrainsRetainedSessions(t *testing.T) {
	dir := t.TempDir()
	text := fmt.Sprintf("workers: 2\ncontrol: {socket: %q, handoff_timeout: 5s, drain_timeout: 1500ms}\n"+
		"listeners:\n  - {name: app, handler: echo, address: \"127.0.0.1:0\"}\n", filepath.Join(dir, "ctl.sock"))
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	setup := func(name string, addr string) *config {
		cfg, err := parseConfig([]byte(strings.Replace(text, "127.0.0.1:0", addr, 1)))
		if err != nil {
			t.Fatal(err)
		}
		cfg.mux.Listeners[0].Handler = &statefulHandler{name: name, counts: map[session.Session]int{}}
		cfg.mux.Logger = log.With("side", name)
		return cfg
	}
	serveIt := func(srv *mux.Server, ln *net.UnixListener, cfg *config) (*control, <-chan struct{}) {
		ctl := &control{ln: ln, srv: srv, cfg: cfg, log: cfg.mux.Logger, started: time.Now()}
		go ctl.serve()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(ctx)
			ln.Close()
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
		return ctl, done
	}

	ownerCfg := setup("owner", "127.0.0.1:0")
	owner, err := mux.New(ownerCfg.mux)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenControl(ownerCfg.controlSocket)
	if err != nil {
		owner.Close()
		t.Fatal(err)
	}
	ownerCtl, ownerDone := serveIt(owner, ln, ownerCfg)
	addr := owner.Addr(0).String()
	a, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	exchange := func(c net.Conn, want string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("x"))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("reply %q, %v; want %q", buf[:n], err, want)
		}
	}
	exchange(a, "owner 1")

	// The successor, as serve does it.
	succCfg := setup("succ", addr)
	inh, err := takeOver(succCfg, slog.New(slog.DiscardHandler))
	if err != nil || inh == nil {
		t.Fatalf("takeOver: %v, %v", inh, err)
	}
	succLn, err := inheritControl(inh)
	if err != nil {
		inh.Abort(err)
		t.Fatal(err)
	}
	succCfg.mux.Inherit = inh
	succ, err := mux.New(succCfg.mux)
	if err != nil {
		t.Fatal(err)
	}
	if r := succ.Restored(); r.Relayed != 1 || r.Restored != 0 {
		t.Fatalf("restored %+v, want the one session relayed", r)
	}
	serveIt(succ, succLn, succCfg)

	exchange(a, "owner 2") // retained: the owner's handler answers, relayed by the successor
	b, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	exchange(b, "succ 1")
	st, err := statusOf(succCfg.controlSocket)
	if err != nil || st.Relayed != 1 || st.Restored != 0 {
		t.Errorf("status on the control socket: %+v, %v; want the successor's, with 1 relayed session", st, err)
	}

	select {
	case <-ownerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the owner still serves 10s after the handoff with a drain timeout of 1.5s")
	}
	if !ownerCtl.drained.Load() {
		t.Error("the owner does not say it drained")
	}
	for _, want := range []string{"handed over to successor", "retained=1", "draining: serving retained sessions", "drain timeout passed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log", want)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for succ.Stats().Sessions != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("successor keeps %d sessions after the owner stopped, want 1", succ.Stats().Sessions)
		}
		time.Sleep(20 * time.Millisecond)
	}
	exchange(a, "succ 1")
}
