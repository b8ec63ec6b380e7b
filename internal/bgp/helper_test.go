//go:build linux

package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// helperEnv carries a helper speaker's spec (JSON) to the re-executed test
// binary.
const helperEnv = "UDPMUX_BGP_HELPER"

// helperSpec is what a helper speaker starts with.
type helperSpec struct {
	Config Config
	Routes []Route
}

// TestHelperSpeaker is not a test: the lab tests run it as a separate
// process in a speaker's namespace (a Speaker dials from the namespace of
// the process that runs it). It starts a Speaker from the spec in
// UDPMUX_BGP_HELPER, announces the spec's routes, says "@@ready" and then
// serves one command a line on standard input, answering "@@" lines on
// standard output: peers, announced, withdrawals, announce ROUTE-JSON,
// withdraw PREFIX REASON, stop graceful|full (which also ends it). Its log
// goes to standard error.
func TestHelperSpeaker(t *testing.T) {
	specJSON := os.Getenv(helperEnv)
	if specJSON == "" {
		t.Skip("helper process for the FRR lab tests")
	}
	var spec helperSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		t.Fatalf("helper spec: %v", err)
	}
	if os.Getenv("UDPMUX_BGP_DEBUG") != "" {
		gobgpLogLevel = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Start(context.Background(), spec.Config, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range spec.Routes {
		if err := s.Announce(r); err != nil {
			t.Fatal(err)
		}
	}
	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, args ...any) {
		fmt.Fprintf(out, "@@"+format+"\n", args...)
		out.Flush()
	}
	replyJSON := func(v any, err error) {
		if err != nil {
			reply("err %v", err)
			return
		}
		b, _ := json.Marshal(v)
		reply("ok %s", b)
	}
	reply("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		verb, arg, _ := strings.Cut(in.Text(), " ")
		switch verb {
		case "peers":
			replyJSON(s.Peers())
		case "announced":
			replyJSON(s.Announced(), nil)
		case "withdrawals":
			replyJSON(s.Withdrawals(), nil)
		case "announce":
			var r Route
			if err := json.Unmarshal([]byte(arg), &r); err != nil {
				replyJSON(nil, err)
				continue
			}
			replyJSON(nil, s.Announce(r))
		case "withdraw":
			p, reason, _ := strings.Cut(arg, " ")
			prefix, err := netip.ParsePrefix(p)
			if err == nil {
				err = s.Withdraw(prefix, reason)
			}
			replyJSON(nil, err)
		case "stop":
			replyJSON(nil, s.Stop(arg == "graceful"))
			return
		default:
			reply("err unknown command %q", verb)
		}
	}
	// The test went away: stop as a daemon would on SIGTERM.
	s.Stop(false)
}

// speakerProc drives a helper speaker process.
type speakerProc struct {
	t     *testing.T
	name  string
	proc  *netlab.Process
	stdin io.WriteCloser
	lines chan string

	mu     sync.Mutex
	stderr strings.Builder
}

// startSpeaker runs a helper speaker in ns with spec and waits for it to be
// ready (started, routes announced).
func startSpeaker(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, name string, spec helperSpec) *speakerProc {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(os.Args[0], "-test.run=^TestHelperSpeaker$", "-test.count=1")
	// The race detector's 1 s wait at exit would only delay a successor.
	cmd.Env = append(os.Environ(), helperEnv+"="+string(b), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	sp := &speakerProc{t: t, name: name, lines: make(chan string, 16)}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) {
		sp.mu.Lock()
		defer sp.mu.Unlock()
		return sp.stderr.Write(p)
	})
	if sp.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	sp.proc = lab.Start(cmd)
	go func() {
		defer close(sp.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "@@"); ok {
				sp.lines <- l
				continue
			}
			sp.mu.Lock()
			sp.stderr.WriteString("stdout: " + sc.Text() + "\n")
			sp.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		sp.mu.Lock()
		defer sp.mu.Unlock()
		// A race in the helper only shows in its output.
		if strings.Contains(sp.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("speaker %s: the race detector found a data race", name)
		}
		if t.Failed() {
			t.Logf("--- speaker %s log:\n%s", name, sp.stderr.String())
		}
	})
	if l := sp.next(15 * time.Second); l != "ready" {
		t.Fatalf("speaker %s: got %q, want ready", name, l)
	}
	return sp
}

// next returns the helper's next answer, failing the test after timeout or
// if the helper ends.
func (sp *speakerProc) next(timeout time.Duration) string {
	sp.t.Helper()
	select {
	case l, ok := <-sp.lines:
		if !ok {
			sp.t.Fatalf("speaker %s ended: %v", sp.name, sp.proc.Wait())
		}
		return l
	case <-time.After(timeout):
		sp.t.Fatalf("speaker %s: no answer within %v", sp.name, timeout)
	}
	return ""
}

// call sends a command and decodes the answer's JSON into v (if not nil);
// an error answer fails the test.
func (sp *speakerProc) call(v any, command string) {
	sp.t.Helper()
	if _, err := fmt.Fprintln(sp.stdin, command); err != nil {
		sp.t.Fatalf("speaker %s: %s: %v", sp.name, command, err)
	}
	l := sp.next(15 * time.Second)
	rest, ok := strings.CutPrefix(l, "ok ")
	if !ok {
		sp.t.Fatalf("speaker %s: %s: %s", sp.name, command, l)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(rest), v); err != nil {
			sp.t.Fatalf("speaker %s: %s: %v: %q", sp.name, command, err, rest)
		}
	}
}

// peers returns the speaker's Peers.
func (sp *speakerProc) peers() []PeerState {
	sp.t.Helper()
	var ps []PeerState
	sp.call(&ps, "peers")
	return ps
}

// stop stops the speaker (Stop(graceful)) and waits for its process to end.
func (sp *speakerProc) stop(graceful bool) {
	sp.t.Helper()
	arg := "full"
	if graceful {
		arg = "graceful"
	}
	sp.call(nil, "stop "+arg)
	select {
	case <-sp.proc.Done():
	case <-time.After(10 * time.Second):
		sp.t.Fatalf("speaker %s did not exit after stop", sp.name)
	}
}

// kill kills the speaker's process with SIGKILL, as a crash would.
func (sp *speakerProc) kill() {
	sp.t.Helper()
	if err := sp.proc.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		sp.t.Fatalf("speaker %s: kill: %v", sp.name, err)
	}
	<-sp.proc.Done()
}

// waitEstablished waits until every peer of the speaker is Established.
func (sp *speakerProc) waitEstablished(timeout time.Duration) []PeerState {
	sp.t.Helper()
	var ps []PeerState
	waitFor(sp.t, timeout, "speaker "+sp.name+"'s sessions to be Established", func() bool {
		ps = sp.peers()
		for _, p := range ps {
			if p.State != StateEstablished {
				return false
			}
		}
		return len(ps) > 0
	})
	return ps
}

// writerFunc is an io.Writer made of a function.
type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
