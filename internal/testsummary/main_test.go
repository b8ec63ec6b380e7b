package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// events renders evs as `go test -json` does: one JSON object a line.
func events(t *testing.T, evs ...event) string {
	t.Helper()
	var b strings.Builder
	for _, e := range evs {
		j, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

const pkg = "example.com/m/p"

// run, skip and fail are the events of a test that passes, skips with
// reason, or fails with msg; start and end those of a package.
func run(test string) []event {
	return []event{
		{Action: "run", Package: pkg, Test: test},
		{Action: "output", Package: pkg, Test: test, Output: "=== RUN   " + test + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "--- PASS: " + test + " (0.00s)\n"},
		{Action: "pass", Package: pkg, Test: test},
	}
}

func skip(test, reason string) []event {
	return []event{
		{Action: "run", Package: pkg, Test: test},
		{Action: "output", Package: pkg, Test: test, Output: "=== RUN   " + test + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "    x_test.go:12: " + reason + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "--- SKIP: " + test + " (0.00s)\n"},
		{Action: "skip", Package: pkg, Test: test},
	}
}

func fail(test, msg string) []event {
	return []event{
		{Action: "run", Package: pkg, Test: test},
		{Action: "output", Package: pkg, Test: test, Output: "=== RUN   " + test + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "    x_test.go:7: " + msg + "\n"},
		{Action: "output", Package: pkg, Test: test, Output: "--- FAIL: " + test + " (0.00s)\n"},
		{Action: "fail", Package: pkg, Test: test},
	}
}

func start() []event { return []event{{Action: "start", Package: pkg}} }

func end(action string) []event {
	return []event{{Action: "output", Package: pkg, Output: action + "\n"}, {Action: action, Package: pkg, Elapsed: 0.5}}
}

func cat(parts ...[]event) []event {
	var all []event
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func TestSummarize(t *testing.T) {
	allow := regexp.MustCompile(`^helper process`)
	for _, tc := range []struct {
		name   string
		in     []event
		extra  string // a line that is not an event, before the events
		opts   options
		ok     bool
		output []string // each must appear in the output
	}{
		{
			name:   "passing",
			in:     cat(start(), run("TestA"), run("TestB"), end("pass")),
			ok:     true,
			output: []string{"ok     example.com/m/p  2 passed, 0 failed, 0 skipped (0.5s)", "total: 1 packages"},
		},
		{
			name:   "a failed test",
			in:     cat(start(), run("TestA"), fail("TestB", "got 1, want 2"), end("fail")),
			output: []string{"--- FAIL: example.com/m/p TestB\n    x_test.go:7: got 1, want 2\n", "FAIL   example.com/m/p  1 passed, 1 failed", "package example.com/m/p failed"},
		},
		{
			name:   "a failed package without failed tests",
			in:     cat(start(), run("TestA"), end("fail")),
			output: []string{"package example.com/m/p failed"},
		},
		{
			name:   "skips are listed",
			in:     cat(start(), run("TestA"), skip("TestB", "needs root"), end("pass")),
			ok:     true,
			output: []string{"1 passed, 0 failed, 1 skipped", "skipped (1):\n  example.com/m/p TestB: needs root\n"},
		},
		{
			name:   "strict: an allowed skip",
			in:     cat(start(), skip("TestHelper", "helper process for TestA"), end("pass")),
			opts:   options{strict: true, allowSkip: allow},
			ok:     true,
			output: []string{"  example.com/m/p TestHelper: helper process for TestA\n"},
		},
		{
			name:   "strict: a skip not allowed",
			in:     cat(start(), skip("TestHelper", "helper process for TestA"), skip("TestB", "needs root"), end("pass")),
			opts:   options{strict: true, allowSkip: allow},
			output: []string{"NOT ALLOWED: example.com/m/p TestB: needs root", "example.com/m/p TestB skipped: needs root"},
		},
		{
			name:   "strict without -allow-skip: no skip is allowed",
			in:     cat(start(), skip("TestHelper", "helper process for TestA"), end("pass")),
			opts:   options{strict: true},
			output: []string{"NOT ALLOWED: example.com/m/p TestHelper"},
		},
		{
			name:   "must-pass: passed",
			in:     cat(start(), run("TestA"), end("pass")),
			opts:   options{mustPass: []string{"m/p.TestA", "example.com/m/p.TestA"}},
			ok:     true,
			output: []string{"ok "},
		},
		{
			name:   "must-pass: skipped, not run, other package",
			in:     cat(start(), skip("TestA", "race"), end("pass")),
			opts:   options{mustPass: []string{"p.TestA", "p.TestB", "q.TestA"}},
			output: []string{"p.TestA did not pass", "p.TestB did not pass", "q.TestA did not pass"},
		},
		{
			name: "a test that never ended",
			in: cat(start(), []event{
				{Action: "run", Package: pkg, Test: "TestHang"},
				{Action: "output", Package: pkg, Test: "TestHang", Output: "    x_test.go:3: waiting\n"},
				{Action: "output", Package: pkg, Output: "panic: test timed out after 10m0s\n"},
			}, end("fail")),
			output: []string{"--- DID NOT END: example.com/m/p TestHang\n    x_test.go:3: waiting\n", "panic: test timed out"},
		},
		{
			name:   "a package that never ended",
			in:     cat(start(), run("TestA")),
			output: []string{"package example.com/m/p never ended"},
		},
		{
			name: "a build failure",
			in: []event{
				{Action: "build-output", ImportPath: pkg + " [" + pkg + ".test]", Output: "p/x_test.go:1:1: syntax error\n"},
				{Action: "build-fail", ImportPath: pkg + " [" + pkg + ".test]"},
				{Action: "start", Package: pkg},
				{Action: "output", Package: pkg, Output: "FAIL\texample.com/m/p [build failed]\n"},
				{Action: "fail", Package: pkg},
			},
			output: []string{"BUILD FAILED example.com/m/p [example.com/m/p.test]\np/x_test.go:1:1: syntax error\n", "package example.com/m/p failed"},
		},
		{
			name:   "a package without test files",
			in:     []event{{Action: "start", Package: pkg}, {Action: "output", Package: pkg, Output: "?   \texample.com/m/p\t[no test files]\n"}, {Action: "skip", Package: pkg}},
			ok:     true,
			output: []string{"none   example.com/m/p  0 passed"},
		},
		{
			name:   "lines that are not events pass through",
			extra:  "go: downloading example.com/x v1.0.0",
			in:     cat(start(), run("TestA"), end("pass")),
			ok:     true,
			output: []string{"go: downloading example.com/x v1.0.0\n"},
		},
		{
			name:   "nothing ran",
			output: []string{"no package ran"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := events(t, tc.in...)
			if tc.extra != "" {
				in = tc.extra + "\n" + in
			}
			var out strings.Builder
			if ok := summarize(strings.NewReader(in), &out, tc.opts); ok != tc.ok {
				t.Errorf("summarize = %v, want %v", ok, tc.ok)
			}
			for _, want := range tc.output {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestSkipReason(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		want  string
	}{
		{[]string{"=== RUN   TestA\n", "    a_test.go:47: needs root\n", "--- SKIP: TestA (0.00s)\n"}, "needs root"},
		{[]string{"=== RUN   TestA/sub\n", "        a_test.go:9: the kernel lacks UDP_GRO\n", "    --- SKIP: TestA/sub (0.00s)\n"}, "the kernel lacks UDP_GRO"},
		{[]string{"    e2e_test.go:205: udpmux x: rejected\n", "        line two\n", "--- SKIP: TestA (0.01s)\n"}, "udpmux x: rejected | line two"},
		{[]string{"=== RUN   TestA\n", "--- SKIP: TestA (0.00s)\n"}, "(no reason given)"},
	} {
		if got := skipReason(tc.lines); got != tc.want {
			t.Errorf("skipReason(%q) = %q, want %q", tc.lines, got, tc.want)
		}
	}
}
