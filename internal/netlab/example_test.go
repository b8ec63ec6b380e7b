//go:build linux

package netlab_test

import (
	"testing"

	"github.com/udpmux/udpmux/internal/netlab"
)

// A test that runs a server in one namespace and a client in another,
// joined by a veth pair. Everything is removed when the test ends.
func Example() {
	var t *testing.T // the test's *testing.T

	lab := netlab.New(t) // skips unless root with iproute2
	srv := lab.NewNamespace("server")
	cli := lab.NewNamespace("client")
	lab.Connect(cli, "198.18.0.1/24", srv, "198.18.0.2/24")

	// A long-running process, stopped at teardown.
	p := lab.Start(srv.Command("my-server", "-listen", "198.18.0.2:9000"))
	_ = p

	// A one-shot command; fails the test if it fails.
	cli.Run("ping", "-c", "1", "-W", "2", "198.18.0.2")
}
