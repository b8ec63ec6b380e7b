// Command quicecho is a QUIC echo server for tests of udpmux: it accepts
// QUIC connections and any number of long-lived bidirectional streams on
// each, and answers every line "SEQ" a client writes with "SEQ SERVER",
// where SERVER is its -server-id (or -label), so that a client can tell
// which server answered. With -quiclb its connection IDs are QUIC-LB
// connection IDs that encode -server-id (quicgo.Generator), which is what
// lets udpmux route a connection's packets to it statelessly.
//
// Usage:
//
//	quicecho -listen 127.0.0.1:4433 -server-id 0a01 \
//	    -quiclb rotation=0,server-id-len=2,nonce-len=6,key=<32 hex digits>,encode-length
//
// Flags:
//
//	-listen ADDR      UDP address to serve (default 127.0.0.1:4433; port 0 picks one)
//	-quiclb CONFIG    QUIC-LB configuration in quiclb.ParseConfig's form; empty: quic-go's own random CIDs
//	-server-id HEX    this server's QUIC-LB server ID (required with -quiclb); also its label
//	-label WORD       what echoes name the server by (default: -server-id, else "quicecho")
//	-versions LIST    QUIC versions to accept, of 1 and 2 (default 1,2)
//	-idle DURATION    connection idle timeout (default 30s)
//
// The TLS certificate is self-signed and made at start; the ALPN is
// "udpmux-echo".
//
// Output: JSON lines on standard output. The first,
//
//	{"event":"listening","addr":"127.0.0.1:4433","server_id":"0a01","label":"0a01","cid_len":9}
//
// says it is ready (cid_len is 0 without -quiclb: quic-go's default). On
// SIGINT or SIGTERM it stops and prints
//
//	{"event":"summary","label":"0a01","connections":3,"streams":3,"echoed":1200,"peer_moves":6}
//
// where peer_moves counts how often a connection's client address changed
// between two lines (migrations the server followed). Errors go to
// standard error. Exit status: 0 after a signal, 1 on a runtime error, 2
// on bad flags.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udpmux/udpmux/quicgo"
	"github.com/udpmux/udpmux/quicgo/internal/echo"
	"github.com/udpmux/udpmux/quiclb"
)

type stats struct {
	conns, streams, echoed, moves atomic.Int64
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("quicecho: ")
	listen := flag.String("listen", "127.0.0.1:4433", "UDP address to serve")
	lbText := flag.String("quiclb", "", "QUIC-LB configuration (rotation=N,server-id-len=N,nonce-len=N[,key=HEX][,encode-length]); empty: quic-go's CIDs")
	sidText := flag.String("server-id", "", "QUIC-LB server ID in hex (required with -quiclb)")
	label := flag.String("label", "", "the name echoes carry (default: the server ID, else quicecho)")
	versions := flag.String("versions", "1,2", "QUIC versions to accept: 1, 2 or 1,2")
	idle := flag.Duration("idle", 30*time.Second, "connection idle timeout")
	flag.Parse()
	usage := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "quicecho: "+format+"\n", args...)
		os.Exit(2)
	}
	if flag.NArg() != 0 {
		usage("unexpected arguments %q", flag.Args())
	}
	vs, err := parseVersions(*versions)
	if err != nil {
		usage("-versions: %v", err)
	}
	var gen *quicgo.Generator
	var sid quiclb.ServerID
	if *sidText != "" {
		if sid, err = quiclb.ParseServerID(*sidText); err != nil {
			usage("-server-id: %v", err)
		}
	}
	if *lbText != "" {
		cfg, err := quiclb.ParseConfig(*lbText)
		if err != nil {
			usage("-quiclb: %v", err)
		}
		if *sidText == "" {
			usage("-quiclb needs -server-id")
		}
		if gen, err = quicgo.NewGenerator(cfg, sid); err != nil {
			usage("%v", err)
		}
	}
	if *label == "" {
		*label = *sidText
		if *label == "" {
			*label = "quicecho"
		}
	}
	if strings.ContainsAny(*label, " \n") {
		usage("-label %q has a space or newline", *label)
	}
	addr, err := net.ResolveUDPAddr("udp", *listen)
	if err != nil {
		usage("-listen: %v", err)
	}
	udp, err := net.ListenUDP("udp", addr)
	if err != nil {
		log.Fatal(err)
	}
	tlsConf, err := echo.ServerTLS()
	if err != nil {
		log.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	cidLen := 0
	if gen != nil {
		tr.ConnectionIDGenerator = gen
		cidLen = gen.ConnectionIDLen()
	}
	ln, err := tr.Listen(tlsConf, &quic.Config{Versions: vs, MaxIdleTimeout: *idle, KeepAlivePeriod: *idle / 3})
	if err != nil {
		log.Fatal(err)
	}
	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]any{"event": "listening", "addr": udp.LocalAddr().String(), "server_id": *sidText, "label": *label, "cid_len": cidLen})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var st stats
	go func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			st.conns.Add(1)
			go serveConn(ctx, conn, *label, &st)
		}
	}()
	<-ctx.Done()
	ln.Close()
	tr.Close()
	out.Encode(map[string]any{"event": "summary", "label": *label, "connections": st.conns.Load(),
		"streams": st.streams.Load(), "echoed": st.echoed.Load(), "peer_moves": st.moves.Load()})
}

func parseVersions(s string) ([]quic.Version, error) {
	var vs []quic.Version
	for f := range strings.SplitSeq(s, ",") {
		switch strings.TrimSpace(f) {
		case "1":
			vs = append(vs, quic.Version1)
		case "2":
			vs = append(vs, quic.Version2)
		default:
			return nil, fmt.Errorf("unknown QUIC version %q (want 1 or 2)", f)
		}
	}
	return vs, nil
}

func serveConn(ctx context.Context, conn *quic.Conn, label string, st *stats) {
	var peer atomic.Value
	peer.Store(conn.RemoteAddr().String())
	for {
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			var appErr *quic.ApplicationError
			if !errors.As(err, &appErr) && ctx.Err() == nil && !isIdle(err) {
				log.Printf("connection from %v: %v", conn.RemoteAddr(), err)
			}
			return
		}
		st.streams.Add(1)
		go func() {
			defer str.Close()
			sc := bufio.NewScanner(str)
			w := bufio.NewWriter(str)
			for sc.Scan() {
				if _, err := strconv.ParseUint(sc.Text(), 10, 64); err != nil {
					log.Printf("connection from %v: bad line %.40q", conn.RemoteAddr(), sc.Text())
					str.CancelRead(1)
					return
				}
				if now := conn.RemoteAddr().String(); peer.Swap(now) != now {
					st.moves.Add(1)
				}
				fmt.Fprintf(w, "%s %s\n", sc.Text(), label)
				if err := w.Flush(); err != nil {
					return
				}
				st.echoed.Add(1)
			}
		}()
	}
}

func isIdle(err error) bool {
	var idle *quic.IdleTimeoutError
	return errors.As(err, &idle)
}
