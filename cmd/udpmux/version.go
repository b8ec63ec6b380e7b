//go:build linux

package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// the module version from the build info is used.
var version = ""

// buildVersion returns the version udpmux reports: the one set at build
// time, the module's, or "(devel)".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// vcsStamp is what `go build` recorded of the checkout it built from
// (-buildvcs, on by default in one): nothing for `go run`, `go test` or a
// build outside a checkout.
type vcsStamp struct {
	revision, time string
	modified       bool
}

// readVCS returns the VCS stamp of bi, the zero stamp if it has none.
func readVCS(bi *debug.BuildInfo) vcsStamp {
	var v vcsStamp
	if bi == nil {
		return v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.revision = s.Value
		case "vcs.time":
			v.time = s.Value
		case "vcs.modified":
			v.modified = s.Value == "true"
		}
	}
	return v
}

// buildRevision returns the revision the binary was built from, with
// "+modified" if the checkout had changes, or "" if unknown: status says
// which binary serves, an upgrade's successor's included.
func buildRevision() string {
	bi, _ := debug.ReadBuildInfo()
	return stampedRevision(readVCS(bi))
}

// stampedRevision is v's revision, with "+modified" if the checkout had
// changes.
func stampedRevision(v vcsStamp) string {
	if v.revision != "" && v.modified {
		return v.revision + "+modified"
	}
	return v.revision
}

// versionText is what `udpmux version` prints for the build info bi (nil
// if the binary has none): the version, then the VCS revision, whether the
// checkout had uncommitted changes and the revision's commit time (Go
// records no build time; the commit's is what it has), and the Go version
// and platform.
func versionText(bi *debug.BuildInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "udpmux %s\n", buildVersion())
	v := readVCS(bi)
	if v.revision == "" {
		b.WriteString("revision:    unknown (built without VCS stamping: go run, go test, -buildvcs=false, or outside a checkout)\n")
	} else {
		fmt.Fprintf(&b, "revision:    %s\nmodified:    %t\ncommit time: %s\n", v.revision, v.modified, v.time)
	}
	if bi != nil {
		var goos, goarch string
		for _, s := range bi.Settings {
			switch s.Key {
			case "GOOS":
				goos = s.Value
			case "GOARCH":
				goarch = s.Value
			}
		}
		fmt.Fprintf(&b, "go:          %s %s/%s\n", bi.GoVersion, goos, goarch)
	}
	return b.String()
}
