package sessiontest_test

import (
	"fmt"
	"net/netip"

	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

func Example() {
	l := &sessiontest.Loop{Handler: session.Echo{}}
	client := netip.MustParseAddrPort("198.51.100.7:4000")
	s, err := l.Open(client)
	if err != nil {
		panic(err)
	}
	s.Deliver(client, []byte("hello"))
	s.Close()
	_, err = s.Write([]byte("late"))
	fmt.Printf("%q %v\n", s.Sent(), err)
	// Output: ["hello"] session: closed
}
