//go:build linux

package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/prereq"
)

// TestVersionText: what `udpmux version` prints for what go build
// recorded, with and without a VCS stamp.
func TestVersionText(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	platform := settings("GOOS", "linux", "GOARCH", "arm64")
	tests := []struct {
		name     string
		bi       *debug.BuildInfo
		want     []string
		revision string // buildRevision's form
	}{
		{"stamped, clean", &debug.BuildInfo{GoVersion: "go1.26.1", Settings: append(settings("vcs", "git",
			"vcs.revision", "0123abcd", "vcs.time", "2026-12-01T10:00:00Z", "vcs.modified", "false"), platform...)},
			[]string{"revision:    0123abcd\n", "modified:    false\n", "commit time: 2026-12-01T10:00:00Z\n", "go:          go1.26.1 linux/arm64\n"}, "0123abcd"},
		{"stamped, modified", &debug.BuildInfo{GoVersion: "go1.26.1", Settings: append(settings(
			"vcs.revision", "0123abcd", "vcs.time", "2026-12-01T10:00:00Z", "vcs.modified", "true"), platform...)},
			[]string{"revision:    0123abcd\n", "modified:    true\n"}, "0123abcd+modified"},
		{"not stamped", &debug.BuildInfo{GoVersion: "go1.26.1", Settings: platform},
			[]string{"revision:    unknown (built without VCS stamping", "go:          go1.26.1 linux/arm64\n"}, ""},
		{"no build info", nil, []string{"revision:    unknown"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := versionText(tc.bi)
			if !strings.HasPrefix(got, "udpmux "+buildVersion()+"\n") {
				t.Errorf("first line of %q is not the version", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			if r := stampedRevision(readVCS(tc.bi)); r != tc.revision {
				t.Errorf("revision for status %q; want %q", r, tc.revision)
			}
		})
	}
}

// TestVersionReportsTheCheckout builds udpmux in a git checkout of the
// sources as they are now, as a release build would be: `udpmux version`
// must print the commit, that the tree was clean, and the commit's time;
// then, with a file changed, that it was modified. (go build stamps only a
// checkout whose .git is a directory, not a worktree's, hence a checkout of
// the test's own.)
func TestVersionReportsTheCheckout(t *testing.T) {
	gitPath, err := exec.LookPath("git")
	if err != nil {
		prereq.Missing(t, "needs git (apt-get install git): go build stamps the revision from it")
	}
	files, err := exec.Command(gitPath, "-C", "../..", "ls-files", "-co", "--exclude-standard", "--", "*.go", "go.mod", "go.sum").Output()
	if err != nil {
		prereq.Missing(t, "needs the sources in a git checkout:", err)
	}
	dir := t.TempDir()
	for _, f := range strings.Fields(string(files)) {
		if strings.HasPrefix(f, "benchmarks/") || strings.HasPrefix(f, "quicgo/") {
			continue // modules of their own
		}
		copyFile(t, filepath.Join("../..", f), filepath.Join(dir, f))
	}
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(gitPath, append([]string{"-C", dir, "-c", "user.name=test", "-c", "user.email=test@example.com"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	git("add", "-A")
	git("commit", "-q", "-m", "udpmux as tested")
	rev := git("rev-parse", "HEAD")
	unix, _ := strconv.ParseInt(git("log", "-1", "--format=%ct"), 10, 64)
	when := time.Unix(unix, 0).UTC().Format(time.RFC3339)
	for _, modified := range []bool{false, true} {
		if modified {
			f, err := os.OpenFile(filepath.Join(dir, "go.mod"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(f, "// changed after the commit\n")
			f.Close()
		}
		bin := filepath.Join(t.TempDir(), "udpmux")
		// -buildvcs=true: the environment may turn stamping off (GOFLAGS),
		// and a build that cannot stamp must fail here rather than pass.
		build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/udpmux")
		build.Dir = dir
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build: %v\n%s", err, out)
		}
		out, err := exec.Command(bin, "version").Output()
		if err != nil {
			t.Fatalf("udpmux version: %v", err)
		}
		for _, want := range []string{"revision:    " + rev + "\n", "modified:    " + strconv.FormatBool(modified) + "\n", "commit time: " + when + "\n", "go:          go1."} {
			if !strings.Contains(string(out), want) {
				t.Errorf("modified %v: udpmux version printed\n%s\nwithout %q", modified, out, want)
			}
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
