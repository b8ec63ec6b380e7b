//go:build linux

package mux

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// byeEcho echoes datagrams and closes its session on "bye"; its state says
// whether its Close has run.
type byeEcho struct{}

func (byeEcho) Open(s session.Session) error { s.SetState("open"); return nil }
func (byeEcho) Datagram(s session.Session, p []byte) {
	if string(p) == "bye" {
		s.Close()
		return
	}
	s.Write(p)
}
func (byeEcho) Close(s session.Session, _ session.Reason) { s.SetState("closed") }

// endedSession is what a SessionEnded hook saw of a session.
type endedSession struct {
	reason session.Reason
	peer   netip.AddrPort
	keys   []flowtable.Key
	stats  session.Stats
	state  any
}

// TestSessionEndedHook: Config.SessionEnded hears of each session that
// ends, once, with its reason, after the handler's Close and while the
// session's peer, keys, counters and state still answer: a session its
// handler closes, one that goes idle, and one the server's shutdown ends.
func TestSessionEndedHook(t *testing.T) {
	tests := []struct {
		name string
		// send is what the client sends, each datagram but "bye" echoed.
		send []string
		// shutdown stops the server after the datagrams.
		shutdown bool
		want     session.Reason
		rx, tx   uint64
	}{
		{name: "closed by its handler", send: []string{"a", "bb", "bye"}, want: session.ReasonClosed, rx: 3, tx: 2},
		{name: "idle", send: []string{"abc"}, want: session.ReasonIdle, rx: 1, tx: 1},
		{name: "shutdown", send: []string{"a"}, shutdown: true, want: session.ReasonShutdown, rx: 1, tx: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan endedSession, 4)
			cfg := Config{Workers: 1, Logger: quietLogger(), Listeners: []ListenerConfig{{
				Name: "bye", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: byeEcho{},
				IdleTimeout: time.Second, // the sweep's resolution: the idle case ends within 2 s
			}}}
			cfg.SessionEnded = func(s session.Session, r session.Reason) {
				ended <- endedSession{reason: r, peer: s.PeerAddr(), keys: s.Keys(nil), stats: s.Stats(), state: s.State()}
			}
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan struct{})
			go func() {
				defer close(served)
				srv.Serve(ctx)
			}()
			defer func() { cancel(); <-served }()
			c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
			for _, p := range tc.send {
				if p == "bye" {
					c.Write([]byte(p))
					continue
				}
				roundTrip(t, c, []byte(p))
			}
			if tc.shutdown {
				cancel()
				<-served
			}
			var got endedSession
			select {
			case got = <-ended:
			case <-time.After(10 * time.Second):
				t.Fatal("no SessionEnded within 10s")
			}
			client := c.LocalAddr().(*net.UDPAddr).AddrPort()
			tuple := flowtable.TupleKey(0, srv.Addr(0), client)
			if got.reason != tc.want || got.peer != client || len(got.keys) != 1 || got.keys[0] != tuple {
				t.Errorf("SessionEnded(%v) for peer %v keys %v; want %v for %v keys [%v]", got.reason, got.peer, got.keys, tc.want, client, tuple)
			}
			if got.state != "closed" {
				t.Errorf("state %v in SessionEnded; want the handler's Close to have run before it", got.state)
			}
			// The loop counts a send after sendmmsg returns, which can be
			// after the client already has the echo; a session ends on the
			// loop after that.
			if got.stats.RxPackets != tc.rx || got.stats.TxPackets != tc.tx || got.stats.Created.IsZero() {
				t.Errorf("stats %+v; want %d datagrams received, %d sent", got.stats, tc.rx, tc.tx)
			}
			cancel()
			<-served
			select {
			case again := <-ended:
				t.Errorf("SessionEnded again, with %v", again.reason)
			default:
			}
		})
	}
}
