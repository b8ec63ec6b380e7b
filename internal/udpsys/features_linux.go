package udpsys

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Features are kernel behaviours udpmux adapts to, detected once.
type Features struct {
	// Release is the running kernel's release string.
	Release string
	// IncomingCPUInGroup reports whether SO_INCOMING_CPU steers the pick
	// inside a reuseport group (Linux 6.1 and later; earlier kernels' fast
	// reuseport path ignored it and picked by hash alone).
	IncomingCPUInGroup bool
	// ConnectedHash4 reports the connected-UDP 4-tuple hash of Linux 6.13 and
	// later: connected sockets no longer share one O(n) bucket per port.
	ConnectedHash4 bool
}

var (
	featuresOnce sync.Once
	features     Features
)

// Detect returns the running kernel's features.
func Detect() Features {
	featuresOnce.Do(func() {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return
		}
		features.Release = unix.ByteSliceToString(u.Release[:])
		major, minor := parseRelease(features.Release)
		features.IncomingCPUInGroup = major > 6 || major == 6 && minor >= 1
		features.ConnectedHash4 = major > 6 || major == 6 && minor >= 13
	})
	return features
}

// parseRelease reads the leading "major.minor" of a kernel release such as
// "6.1.0-18-amd64"; anything it cannot read is 0.
func parseRelease(r string) (major, minor int) {
	n, field := 0, 0
	for i := 0; i <= len(r); i++ {
		if i < len(r) && r[i] >= '0' && r[i] <= '9' {
			n = n*10 + int(r[i]-'0')
			continue
		}
		if field == 0 {
			major = n
		} else {
			return major, n
		}
		if i == len(r) || r[i] != '.' {
			return major, 0
		}
		field, n = 1, 0
	}
	return major, minor
}
