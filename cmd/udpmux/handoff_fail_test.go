//go:build linux

package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
)

// runningDaemon is a udpmux process serving echo, with its log.
type runningDaemon struct {
	cmd  *exec.Cmd
	sock string
	addr string
	mu   sync.Mutex
	log  strings.Builder
}

func (d *runningDaemon) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

func startDaemon(t *testing.T, bin string) *runningDaemon {
	return startDaemonAt(t, bin, "127.0.0.1:0", "")
}

// startDaemonAt starts the daemon with an echo listener named echo at addr
// and its own control socket; extra is appended to its config.
func startDaemonAt(t *testing.T, bin, addr, extra string) *runningDaemon {
	t.Helper()
	d := &runningDaemon{sock: filepath.Join(t.TempDir(), "ctl.sock")}
	cfg := writeConfig(t, "workers: 2\ncontrol: {socket: "+d.sock+", handoff_timeout: 1s}\n"+
		"listeners:\n  - {name: echo, handler: echo, address: \""+addr+"\"}\n"+extra)
	d.cmd = exec.Command(bin, "-c", cfg)
	stderr, _ := d.cmd.StderrPipe()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logText())
		}
	})
	addrRE := regexp.MustCompile(`msg=listening listener=echo address=(\S+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	select {
	case d.addr = <-found:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not start")
	}
	return d
}

// echoOnce checks one round trip on c.
func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, buf[:n], err)
	}
}

// TestFailedHandoffChangesNothing plays a successor that fails in each way
// the protocol allows; afterwards the same process must serve the same
// session, and the failure must be logged.
func TestFailedHandoffChangesNothing(t *testing.T) {
	bin := buildDaemon(t)
	goodConfig, _ := os.ReadFile(writeConfig(t, goodConfig))
	hello := func(version uint16, cfg []byte) []byte {
		return handoff.AppendHello(nil, handoff.Hello{Version: version, PID: int32(os.Getpid()), Meta: cfg})
	}
	tests := []struct {
		name      string
		successor func(t *testing.T, d *runningDaemon)
		wantLog   string
	}{
		{"another protocol version", func(t *testing.T, d *runningDaemon) {
			expectReject(t, d.sock, hello(99, goodConfig), "protocol version 99")
		}, "handoff refused"},
		{"invalid config", func(t *testing.T, d *runningDaemon) {
			expectReject(t, d.sock, hello(handoff.Version, []byte("workers: -1\nlisteners:\n  - {handler: echo, address: \"127.0.0.1:1\"}\n")), "successor's config: workers: -1 is negative")
		}, "handoff refused"},
		{"killed with SIGKILL while the owner is paused", func(t *testing.T, d *runningDaemon) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSuccessorKilledMidTransfer$")
			cmd.Env = append(os.Environ(), "UDPMUX_HELPER_SOCKET="+d.sock)
			err := cmd.Run()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("helper successor did not die by SIGKILL: %v", err)
			}
		}, "handoff failed while paused:"},
		{"silent before it is ready", func(t *testing.T, d *runningDaemon) {
			conn := mustDial(t, d.sock)
			conn.Send(handoff.TypeHello, hello(handoff.Version, goodConfig), nil)
			waitLog(t, d, "handoff failed before pausing:") // the 1s handoff_timeout
			conn.Close()
		}, "handoff failed before pausing:"},
		{"silent during the early copy", func(t *testing.T, d *runningDaemon) {
			conn := mustDial(t, d.sock)
			r, err := handoff.Receive(t.Context(), conn, goodConfig, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			r.CloseFiles()
			conn.Send(handoff.TypeReady, nil, nil)
			waitLog(t, d, "handoff failed before pausing:") // no second Ready
			conn.Close()
		}, "handoff failed before pausing:"},
		{"silent while the owner is paused", func(t *testing.T, d *runningDaemon) {
			conn, _ := readySuccessor(t, d, goodConfig)
			waitLog(t, d, "handoff failed while paused:") // paused, then the 1s handoff_timeout
			conn.Close()
		}, "handoff failed while paused:"},
		{"aborts after the state arrived", func(t *testing.T, d *runningDaemon) {
			conn, r := readySuccessor(t, d, goodConfig)
			// Read the whole session stream without restoring it.
			for {
				typ, _, fds, err := conn.Recv()
				closeFDs(fds)
				if err != nil {
					t.Fatal(err)
				}
				if typ == handoff.TypeEnd {
					break
				}
			}
			r.Abort(errTestAbort)
		}, "successor aborted: test abort"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, bin)
			c, err := net.Dial("udp", d.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			echoOnce(t, c, "before")
			before, err := statusOf(d.sock)
			if err != nil {
				t.Fatal(err)
			}
			tc.successor(t, d)
			waitLog(t, d, tc.wantLog)
			echoOnce(t, c, "after")
			after, err := statusOf(d.sock)
			if err != nil {
				t.Fatal(err)
			}
			if after.PID != before.PID || after.Listeners[0].SessionsOpened != 1 || after.Sessions != 1 {
				t.Errorf("after a failed handoff: pid %d→%d, sessions opened %d, live %d; want the same process and session",
					before.PID, after.PID, after.Listeners[0].SessionsOpened, after.Sessions)
			}
		})
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTestAbort = testError("test abort")

// readySuccessor plays a successor until the owner has paused. The
// descriptors it received are closed.
func readySuccessor(t *testing.T, d *runningDaemon, config []byte) (*handoff.Conn, *handoff.Receiver) {
	t.Helper()
	conn := mustDial(t, d.sock)
	r, err := handoff.Receive(t.Context(), conn, config, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r.CloseFiles()
	if err := readyToPause(conn); err != nil {
		t.Fatal(err)
	}
	return conn, r
}

// readyToPause says Ready once built, takes the early copy without
// restoring it, answering each of its rounds with Ready, and returns when
// the owner says it has paused.
func readyToPause(conn *handoff.Conn) error {
	if err := conn.Send(handoff.TypeReady, nil, nil); err != nil {
		return err
	}
	for {
		typ, _, fds, err := conn.Recv()
		closeFDs(fds)
		if err != nil {
			return err
		}
		switch typ {
		case handoff.TypeCopied:
			if err := conn.Send(handoff.TypeReady, nil, nil); err != nil {
				return err
			}
		case handoff.TypeAccept:
			return nil
		}
	}
}

func mustDial(t *testing.T, sock string) *handoff.Conn {
	t.Helper()
	conn, err := handoff.Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func expectReject(t *testing.T, sock string, hello []byte, want string) {
	t.Helper()
	conn := mustDial(t, sock)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Send(handoff.TypeHello, hello, nil)
	typ, p, fds, err := conn.Recv()
	closeFDs(fds)
	if err != nil || typ != handoff.TypeReject || !strings.Contains(string(p), want) {
		t.Fatalf("got type %d %q %v, want a rejection containing %q", typ, p, err, want)
	}
}

func waitLog(t *testing.T, d *runningDaemon, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logText(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon never logged %q", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHelperSuccessorKilledMidTransfer is not a test: run by
// TestFailedHandoffChangesNothing as a separate process, it starts a handoff,
// says it is ready, so that the owner pauses, and kills itself with SIGKILL
// as the sessions start to arrive.
func TestHelperSuccessorKilledMidTransfer(t *testing.T) {
	sock := os.Getenv("UDPMUX_HELPER_SOCKET")
	if sock == "" {
		t.Skip("helper process for TestFailedHandoffChangesNothing")
	}
	conn, err := handoff.Dial(sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// No t.TempDir here: a process that dies by SIGKILL runs no cleanup.
	if _, err := handoff.Receive(t.Context(), conn, []byte(goodConfig), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Die as soon as the owner has paused.
	if err := readyToPause(conn); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
