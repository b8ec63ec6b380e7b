// Command quicclient drives QUIC echo servers (quicecho) for tests of
// udpmux: it opens -conns connections, each with one long-lived
// bidirectional stream, writes a counter on each stream every -interval
// and checks every echo, and migrates connections to new local UDP
// sockets on command, using quic-go's path API (Conn.AddPath on a new
// Transport, Path.Probe, Path.Switch). It reports per connection what was
// lost or late, which servers answered, and how each migration went.
//
// Usage:
//
//	quicclient -server 127.0.0.1:4433 -conns 4 -duration 10s -migrate-at 3s,6s
//
// Flags:
//
//	-server ADDR        the server (or udpmux) address (required)
//	-bind IP            local address of the client's sockets (default: the wildcard)
//	-conns N            connections, one stream each (default 1)
//	-interval D         time between two counters on a stream (default 100ms)
//	-duration D         how long to send; 0 sends until SIGINT or SIGTERM (default 10s)
//	-late D             an echo later than this is late; at the end, the wait for the last echoes (default 1s)
//	-migrate-at LIST    times after the start, as "2s,4.5s", at which every connection migrates
//	-migrate-timeout D  how long a path may take to validate (default 5s)
//	-versions LIST      QUIC versions to offer, in order of preference, of 1 and 2 (default 1)
//	-fail-late          count late echoes as failures
//	-echoes             print a line per connection when it is up and per echo (see Output)
//
// SIGUSR1 migrates every connection once more, at any time. SIGINT and
// SIGTERM end the run early, as if -duration had passed.
//
// Output: JSON lines on standard output, one object each:
//
//	{"event":"connected","connections":4}                     every connection is up
//	{"event":"migrated","conn":0,"migration":{...}}            one migration, as in the report
//	{"event":"report","ok":true,"connections":[...]}           last: the result
//
// and with -echoes also, so that a test can tell when each connection went
// unanswered and for how long (times in Unix nanoseconds):
//
//	{"event":"dialed","conn":0,"local":"198.18.2.20:40123"}   connection 0 is up, from this socket
//	{"event":"echo","conn":0,"seq":7,"sent":...,"recv":...,"server":"0a01"}   one echo
//
// The report has, per connection: "conn" (its index), "local" (each local
// address it used, in order), "sent", "echoed", "lost" (no echo by the
// end), "late", "max_rtt_ms", "servers" (echoes per server label: one
// label means one server answered throughout), "migrations" (each with
// "at" (seconds since the start), "from", "to", "ok", "probe_ms",
// "error"), and "error" (what ended the connection, if anything). "ok" is
// true when no connection failed, lost an echo, heard from more than one
// server, or failed a migration (nor had a late echo, with -fail-late).
// Exit status: 0 if ok, 1 if not, 2 on bad flags.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udpmux/udpmux/quicgo/internal/echo"
)

// Migration is one migration of a connection to a new local socket.
type Migration struct {
	At      float64 `json:"at"` // seconds since the start
	From    string  `json:"from"`
	To      string  `json:"to"`
	OK      bool    `json:"ok"`
	ProbeMS float64 `json:"probe_ms"`
	Error   string  `json:"error,omitempty"`
}

// ConnReport is the result of one connection.
type ConnReport struct {
	Conn       int            `json:"conn"`
	Local      []string       `json:"local"`
	Sent       int            `json:"sent"`
	Echoed     int            `json:"echoed"`
	Lost       int            `json:"lost"`
	Late       int            `json:"late"`
	MaxRTTMS   float64        `json:"max_rtt_ms"`
	Servers    map[string]int `json:"servers"`
	Migrations []Migration    `json:"migrations"`
	Error      string         `json:"error,omitempty"`
}

type options struct {
	server         *net.UDPAddr
	bind           net.IP
	interval, late time.Duration
	migrateTimeout time.Duration
	versions       []quic.Version
	echoes         bool // emit a line per dialed connection and per echo
}

// Echo is one echo, as -echoes prints it.
type Echo struct {
	Event  string `json:"event"` // "echo"
	Conn   int    `json:"conn"`
	Seq    uint64 `json:"seq"`
	Sent   int64  `json:"sent"` // Unix nanoseconds
	Recv   int64  `json:"recv"`
	Server string `json:"server"`
}

var (
	outMu sync.Mutex
	out   = json.NewEncoder(os.Stdout)
)

func emit(v any) {
	outMu.Lock()
	defer outMu.Unlock()
	out.Encode(v)
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("quicclient: ")
	server := flag.String("server", "", "server address (host:port)")
	bind := flag.String("bind", "", "local IP address of the client's sockets")
	conns := flag.Int("conns", 1, "connections")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between counters on a stream")
	duration := flag.Duration("duration", 10*time.Second, "how long to send; 0: until SIGINT/SIGTERM")
	late := flag.Duration("late", time.Second, "an echo later than this is late")
	migrateAt := flag.String("migrate-at", "", "times after the start at which every connection migrates, e.g. 2s,4s")
	migrateTimeout := flag.Duration("migrate-timeout", 5*time.Second, "path validation timeout")
	versions := flag.String("versions", "1", "QUIC versions to offer: 1, 2, 1,2 or 2,1")
	failLate := flag.Bool("fail-late", false, "count late echoes as failures")
	echoes := flag.Bool("echoes", false, "print a line per dialed connection and per echo")
	flag.Parse()
	usage := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "quicclient: "+format+"\n", args...)
		os.Exit(2)
	}
	if flag.NArg() != 0 {
		usage("unexpected arguments %q", flag.Args())
	}
	if *server == "" {
		usage("-server is required")
	}
	if *conns < 1 || *interval <= 0 || *late <= 0 || *duration < 0 {
		usage("-conns, -interval and -late must be positive, -duration not negative")
	}
	o := options{interval: *interval, late: *late, migrateTimeout: *migrateTimeout, echoes: *echoes}
	var err error
	if o.server, err = net.ResolveUDPAddr("udp", *server); err != nil {
		usage("-server: %v", err)
	}
	if *bind != "" {
		if o.bind = net.ParseIP(*bind); o.bind == nil {
			usage("-bind %q is not an IP address", *bind)
		}
	}
	for f := range strings.SplitSeq(*versions, ",") {
		switch strings.TrimSpace(f) {
		case "1":
			o.versions = append(o.versions, quic.Version1)
		case "2":
			o.versions = append(o.versions, quic.Version2)
		default:
			usage("-versions: unknown QUIC version %q", f)
		}
	}
	var times []time.Duration
	if *migrateAt != "" {
		for f := range strings.SplitSeq(*migrateAt, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil || d < 0 {
				usage("-migrate-at: bad time %q", f)
			}
			times = append(times, d)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)

	start := time.Now()
	clients := make([]*client, *conns)
	var wg sync.WaitGroup
	var dialErrs sync.Map
	for i := range clients {
		clients[i] = &client{o: o, rep: ConnReport{Conn: i, Servers: map[string]int{}, Migrations: []Migration{}}, start: start,
			migrate: make(chan struct{}, 16), outstanding: map[uint64]time.Time{}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := clients[i].dial(ctx); err != nil {
				dialErrs.Store(i, err)
			}
		}()
	}
	wg.Wait()
	emit(map[string]any{"event": "connected", "connections": *conns})

	runCtx, cancel := context.WithCancel(ctx)
	if *duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, *duration)
	}
	defer cancel()
	go func() {
		timers := make([]<-chan time.Time, len(times))
		for i, t := range times {
			timers[i] = time.After(time.Until(start.Add(t)))
		}
		trigger := func() {
			for _, c := range clients {
				select {
				case c.migrate <- struct{}{}:
				default:
				}
			}
		}
		for _, t := range timers {
			go func() {
				select {
				case <-t:
					trigger()
				case <-runCtx.Done():
				}
			}()
		}
		for {
			select {
			case <-usr1:
				trigger()
			case <-runCtx.Done():
				return
			}
		}
	}()
	for _, c := range clients {
		if c.conn == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(runCtx)
		}()
	}
	wg.Wait()

	ok := true
	reps := make([]ConnReport, len(clients))
	for i, c := range clients {
		r := c.rep
		if err, bad := dialErrs.Load(i); bad {
			r.Error = fmt.Sprint(err)
		}
		fail := r.Error != "" || r.Lost > 0 || len(r.Servers) > 1 || r.Echoed == 0 || (*failLate && r.Late > 0)
		for _, m := range r.Migrations {
			fail = fail || !m.OK
		}
		ok = ok && !fail
		reps[i] = r
	}
	emit(map[string]any{"event": "report", "ok": ok, "seconds": time.Since(start).Seconds(), "connections": reps})
	if !ok {
		os.Exit(1)
	}
}

type client struct {
	o     options
	start time.Time
	conn  *quic.Conn
	str   *quic.Stream
	trs   []*quic.Transport
	paths []*quic.Path

	migrate chan struct{}

	mu          sync.Mutex
	rep         ConnReport
	outstanding map[uint64]time.Time
}

func (c *client) listen() (*quic.Transport, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.o.bind})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	c.trs = append(c.trs, tr)
	c.rep.Local = append(c.rep.Local, udp.LocalAddr().String())
	return tr, nil
}

func (c *client) dial(ctx context.Context) error {
	tr, err := c.listen()
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := tr.Dial(dctx, c.o.server, echo.ClientTLS(), &quic.Config{
		Versions: c.o.versions, MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: 5 * time.Second,
	})
	if err != nil {
		c.close()
		return fmt.Errorf("dial: %w", err)
	}
	str, err := conn.OpenStreamSync(dctx)
	if err != nil {
		conn.CloseWithError(1, "")
		c.close()
		return fmt.Errorf("open stream: %w", err)
	}
	c.conn, c.str = conn, str
	if c.o.echoes {
		emit(map[string]any{"event": "dialed", "conn": c.rep.Conn, "local": conn.LocalAddr().String()})
	}
	return nil
}

func (c *client) close() {
	for _, tr := range c.trs {
		tr.Close()
	}
}

// run sends counters until ctx ends, reads the echoes, migrates on
// request, then waits for the last echoes and closes the connection.
func (c *client) run(ctx context.Context) {
	readDone := make(chan error, 1)
	go func() { readDone <- c.read() }()
	tick := time.NewTicker(c.o.interval)
	defer tick.Stop()
	w := bufio.NewWriter(c.str)
	var seq uint64
	fail := func(err error) {
		c.mu.Lock()
		if c.rep.Error == "" {
			c.rep.Error = err.Error()
		}
		c.mu.Unlock()
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-readDone:
			fail(fmt.Errorf("reading echoes: %v", err))
			readDone = nil
			break loop
		case <-c.migrate:
			c.doMigrate(ctx)
		case <-tick.C:
			seq++
			c.mu.Lock()
			c.outstanding[seq] = time.Now()
			c.rep.Sent++
			c.mu.Unlock()
			fmt.Fprintf(w, "%d\n", seq)
			if err := w.Flush(); err != nil {
				fail(fmt.Errorf("writing: %v", err))
				break loop
			}
		}
	}
	// The last echoes.
	deadline := time.Now().Add(c.o.late)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n := len(c.outstanding)
		c.mu.Unlock()
		if n == 0 || readDone == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.conn.CloseWithError(0, "done")
	c.close()
	c.mu.Lock()
	c.rep.Lost = len(c.outstanding)
	c.mu.Unlock()
}

// read reads echoes until the stream ends.
func (c *client) read() error {
	sc := bufio.NewScanner(c.str)
	for sc.Scan() {
		seqText, label, ok := strings.Cut(sc.Text(), " ")
		seq, err := strconv.ParseUint(seqText, 10, 64)
		if !ok || err != nil {
			return fmt.Errorf("bad echo %.40q", sc.Text())
		}
		now := time.Now()
		c.mu.Lock()
		sent, known := c.outstanding[seq]
		if known {
			delete(c.outstanding, seq)
			c.rep.Echoed++
			c.rep.Servers[label]++
			rtt := now.Sub(sent)
			if rtt > c.o.late {
				c.rep.Late++
			}
			c.rep.MaxRTTMS = max(c.rep.MaxRTTMS, float64(rtt.Microseconds())/1000)
		}
		c.mu.Unlock()
		if !known {
			return fmt.Errorf("echo of %d, which is not outstanding", seq)
		}
		if c.o.echoes {
			emit(Echo{Event: "echo", Conn: c.rep.Conn, Seq: seq, Sent: sent.UnixNano(), Recv: now.UnixNano(), Server: label})
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return fmt.Errorf("stream ended")
}

// doMigrate moves the connection to a new local socket: probe the new
// path, then switch to it. The previous path, if it was one this client
// added, is closed; the transports stay open until the end.
func (c *client) doMigrate(ctx context.Context) {
	m := Migration{At: time.Since(c.start).Seconds(), From: c.conn.LocalAddr().String()}
	err := func() error {
		tr, err := c.listen()
		if err != nil {
			return err
		}
		m.To = tr.Conn.LocalAddr().String()
		path, err := c.conn.AddPath(tr)
		if err != nil {
			return fmt.Errorf("add path: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, c.o.migrateTimeout)
		defer cancel()
		t0 := time.Now()
		if err := path.Probe(pctx); err != nil {
			path.Close()
			return fmt.Errorf("probe: %w", err)
		}
		m.ProbeMS = float64(time.Since(t0).Microseconds()) / 1000
		if err := path.Switch(); err != nil {
			path.Close()
			return fmt.Errorf("switch: %w", err)
		}
		if n := len(c.paths); n > 0 {
			c.paths[n-1].Close()
		}
		c.paths = append(c.paths, path)
		return nil
	}()
	m.OK = err == nil
	if err != nil {
		m.Error = err.Error()
	}
	c.mu.Lock()
	c.rep.Migrations = append(c.rep.Migrations, m)
	c.mu.Unlock()
	emit(map[string]any{"event": "migrated", "conn": c.rep.Conn, "migration": m})
}
