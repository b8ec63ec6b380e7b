package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has joined the namespace, and returns fn's
// error. Sockets that fn opens belong to the namespace for their whole life
// and may be used from any goroutine afterwards, so a test can talk to
// daemons inside namespaces without a helper process. The thread is
// discarded when fn returns (it is never handed back to the Go scheduler),
// so the rest of the program stays in its own namespace. fn must not start
// goroutines that expect to be in the namespace: they run on other threads.
func (n *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join(netnsDir, n.name))
		if err != nil {
			errc <- fmt.Errorf("netlab: open namespace %s: %w", n.name, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("netlab: enter namespace %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
