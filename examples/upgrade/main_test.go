//go:build linux

package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestUpgradeLosesNothing runs the example as its users would: clients send
// without pause while the program is upgraded three times with SIGUSR2.
// Every datagram is answered, by the process serving at the time, and each
// session's count goes on where it was: the sessions moved with their state.
func TestUpgradeLosesNothing(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "upgrade")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0")
	stdout, _ := cmd.StdoutPipe()
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The first process and each successor print a line once they serve.
	serving := make(chan [2]string, 8)
	go func() {
		re := regexp.MustCompile(`^serving (\S+) pid (\d+)$`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				serving <- [2]string{m[1], m[2]}
			}
		}
	}()
	var pids []int
	next := func() (string, int) {
		t.Helper()
		select {
		case s := <-serving:
			pid, _ := strconv.Atoi(s[1])
			pids = append(pids, pid)
			return s[0], pid
		case <-time.After(30 * time.Second):
			t.Fatalf("no process serving\n%s", logs.String())
		}
		return "", 0
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		cmd.Wait()
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	addr, pid := next()

	const clients = 8
	stop := make(chan struct{})
	results := make(chan error, clients)
	for i := range clients {
		go func() { results <- sendUntil(addr, i, stop) }()
	}
	time.Sleep(200 * time.Millisecond)
	for range 3 {
		syscall.Kill(pid, syscall.SIGUSR2)
		old := pid
		if _, pid = next(); pid == old {
			t.Fatal("the successor has the old pid")
		}
		waitExit(t, old)
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	for range clients {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if strings.Contains(logs.String(), "upgrade failed") {
		t.Error("an upgrade failed")
	}
}

// sendUntil sends numbered datagrams from a socket of its own, one at a time,
// until stop, and checks each reply: its own payload, counted one more than
// the last.
func sendUntil(addr string, client int, stop <-chan struct{}) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 128)
	for n := 1; ; n++ {
		select {
		case <-stop:
			if n < 100 {
				return fmt.Errorf("client %d: only %d round trips", client, n-1)
			}
			return nil
		default:
		}
		msg := fmt.Sprintf("c%d-%d", client, n)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("client %d: no reply to datagram %d: %w", client, n, err)
		}
		if want := fmt.Sprintf("%d %s", n, msg); string(buf[:got]) != want {
			return fmt.Errorf("client %d: reply %q, want %q", client, buf[:got], want)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitExit waits for the process pid to end.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !exited(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after handing off", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exited reports whether pid has ended: it is gone, or a zombie waiting
// for a parent (this test, for the first process) to reap it.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z'
}

// syncBuffer is a strings.Builder for several writers.
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
