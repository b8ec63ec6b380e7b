// Package prereq ends tests whose prerequisites are missing: a program or
// Debian package, a device such as /dev/net/tun, root, a Go module, a kernel
// feature. On a developer's machine such a test skips, naming what is
// missing; in CI (the environment variable CI is "true") it fails instead,
// because CI installs everything and a skip there would be a test that
// claims to pass without having run.
//
// Skips that are not about a missing prerequisite (a helper process's
// re-exec, -short, an opt-in flag, allocation counts under the race
// detector) call t.Skip directly and skip in CI too.
package prereq

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// CI reports whether the tests run in CI: the environment variable CI is
// "true", as most CI systems set it.
func CI() bool { return os.Getenv("CI") == "true" }

// Missing ends the test because a prerequisite is missing: it skips with
// the message built from args (spaced as by t.Skip and fmt.Sprintln), or,
// under CI, fails with it.
func Missing(t testing.TB, args ...any) {
	t.Helper()
	end(t, strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}

// Missingf is Missing with a format (as by fmt.Sprintf).
func Missingf(t testing.TB, format string, args ...any) {
	t.Helper()
	end(t, fmt.Sprintf(format, args...))
}

func end(t testing.TB, msg string) {
	t.Helper()
	if CI() {
		t.Fatal(msg + " (CI=true: a missing prerequisite fails the test)")
		return
	}
	t.Skip(msg)
}
