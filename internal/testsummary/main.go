// Command testsummary reads the events of `go test -json` on its standard
// input and says what ran: as each package ends, a line with how many of
// its tests (subtests included) passed, failed and skipped, and the output
// of each failed test and of each failed package (a panic, a timeout, a
// build error); at the end a table of every package and a list of the
// skipped tests with the reason each gave. Lines that are not JSON events
// (go's own messages) are passed through.
//
// It exits with status 1 if a test, a package or a build failed, if no
// package ran at all, if -strict is set and a test skipped for a reason
// that -allow-skip does not match, or if a test that -must-pass names did
// not pass. .ci/run pipes the test command into it.
//
// Usage:
//
//	go test -json ./... | testsummary [-strict] [-allow-skip REGEXP] [-must-pass PKG.Test,...]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

func main() {
	strict := flag.Bool("strict", false, "fail if a test skips for a reason that -allow-skip does not match")
	allow := flag.String("allow-skip", "", "with -strict, the `regexp` that the reason of an allowed skip matches")
	mustPass := flag.String("must-pass", "", "comma-separated `tests` that must pass, each as PKG.TestName; PKG is the package's import path or its end (e.g. mux, dissect/wireguard)")
	flag.Parse()
	var opts options
	opts.strict = *strict
	if *allow != "" {
		re, err := regexp.Compile(*allow)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary: -allow-skip:", err)
			os.Exit(2)
		}
		opts.allowSkip = re
	}
	if *mustPass != "" {
		opts.mustPass = strings.Split(*mustPass, ",")
	}
	if !summarize(os.Stdin, os.Stdout, opts) {
		os.Exit(1)
	}
}

// options are the checks beyond failed tests and packages.
type options struct {
	strict    bool           // a skip that allowSkip does not match fails the run
	allowSkip *regexp.Regexp // nil: no skip is allowed (with strict)
	mustPass  []string       // PKG.TestName of tests that must pass
}

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string // build-output and build-fail events
}

// pkgState is what is known of one package so far.
type pkgState struct {
	name                  string
	passed, failed, skip  int
	result                string // pass, fail, skip (no test files); "" while it runs
	elapsed               float64
	output                []string            // the package's own output lines
	tests                 map[string][]string // output lines of each test still running or failed
	running               map[string]bool     // tests started and not ended
	passedTests           map[string]bool
	noTestsToRun, noFiles bool
}

// skipped is one skipped test and its reason.
type skipped struct {
	pkg, test, reason string
	allowed           bool
}

// summarize reads events from r, reports on w as it goes and at the end,
// and reports whether the run passed the checks.
func summarize(r io.Reader, w io.Writer, opts options) bool {
	var (
		pkgs   = map[string]*pkgState{}
		order  []string
		skips  []skipped
		builds = map[string][]string{} // build output by import path
		failed []string                // why the run fails
	)
	get := func(name string) *pkgState {
		p := pkgs[name]
		if p == nil {
			p = &pkgState{name: name, tests: map[string][]string{}, running: map[string]bool{}, passedTests: map[string]bool{}}
			pkgs[name] = p
			order = append(order, name)
		}
		return p
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		switch e.Action {
		case "build-output":
			builds[e.ImportPath] = append(builds[e.ImportPath], e.Output)
			continue
		case "build-fail":
			fmt.Fprintf(w, "BUILD FAILED %s\n%s", e.ImportPath, strings.Join(builds[e.ImportPath], ""))
			failed = append(failed, "build of "+e.ImportPath+" failed")
			continue
		}
		if e.Package == "" {
			continue
		}
		p := get(e.Package)
		if e.Test == "" {
			switch e.Action {
			case "output":
				p.output = append(p.output, e.Output)
				if strings.Contains(e.Output, "[no tests to run]") {
					p.noTestsToRun = true
				}
			case "pass", "fail", "skip":
				p.result, p.elapsed = e.Action, e.Elapsed
				p.noFiles = e.Action == "skip"
				reportPackage(w, p)
				if e.Action == "fail" {
					failed = append(failed, "package "+p.name+" failed")
				}
			}
			continue
		}
		switch e.Action {
		case "run":
			p.running[e.Test] = true
		case "output":
			p.tests[e.Test] = append(p.tests[e.Test], e.Output)
		case "pass":
			p.passed++
			p.passedTests[e.Test] = true
		case "fail":
			p.failed++
			fmt.Fprintf(w, "--- FAIL: %s %s\n%s", p.name, e.Test, strings.Join(testOutput(p.tests[e.Test]), ""))
		case "skip":
			p.skip++
			s := skipped{pkg: p.name, test: e.Test, reason: skipReason(p.tests[e.Test])}
			s.allowed = !opts.strict || opts.allowSkip != nil && opts.allowSkip.MatchString(s.reason)
			skips = append(skips, s)
		}
		switch e.Action {
		case "pass", "fail", "skip":
			delete(p.running, e.Test)
			if e.Action != "fail" {
				delete(p.tests, e.Test)
			}
		}
	}
	if err := sc.Err(); err != nil {
		failed = append(failed, "reading the events: "+err.Error())
	}

	var total pkgState
	width := len("package")
	for _, name := range order {
		p := pkgs[name]
		total.passed += p.passed
		total.failed += p.failed
		total.skip += p.skip
		width = max(width, len(name))
	}
	totalName := fmt.Sprintf("total: %d packages", len(order))
	width = max(width, len(totalName))
	row := func(name, passed, failed, skip, result string) {
		line := fmt.Sprintf("%-*s %7s %7s %8s  %s", width, name, passed, failed, skip, result)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintf(w, "\ntests and subtests:\n")
	row("package", "passed", "failed", "skipped", "")
	for _, name := range order {
		p := pkgs[name]
		row(name, fmt.Sprint(p.passed), fmt.Sprint(p.failed), fmt.Sprint(p.skip), resultWord(p))
	}
	row(totalName, fmt.Sprint(total.passed), fmt.Sprint(total.failed), fmt.Sprint(total.skip), "")

	if len(skips) > 0 {
		fmt.Fprintf(w, "\nskipped (%d):\n", len(skips))
		for _, s := range skips {
			mark := ""
			if !s.allowed {
				mark = "NOT ALLOWED: "
				failed = append(failed, fmt.Sprintf("%s %s skipped: %s", s.pkg, s.test, s.reason))
			}
			fmt.Fprintf(w, "  %s%s %s: %s\n", mark, s.pkg, s.test, s.reason)
		}
	}
	for _, name := range opts.mustPass {
		if !passedSomewhere(pkgs, name) {
			failed = append(failed, name+" did not pass (not run, skipped or failed)")
		}
	}
	if len(order) == 0 {
		failed = append(failed, "no package ran")
	}
	for _, name := range order {
		if p := pkgs[name]; p.result == "" {
			failed = append(failed, "package "+name+" never ended")
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\nFAIL:\n")
		for _, f := range failed {
			fmt.Fprintf(w, "  %s\n", f)
		}
		return false
	}
	return true
}

// reportPackage writes the line for a package that has just ended, and the
// output of a failed one: its own, and that of any test still running (a
// panic or a timeout ends the package in the middle of its tests).
func reportPackage(w io.Writer, p *pkgState) {
	word := resultWord(p)
	fmt.Fprintf(w, "%-6s %s  %d passed, %d failed, %d skipped (%.1fs)\n", word, p.name, p.passed, p.failed, p.skip, p.elapsed)
	if p.result != "fail" {
		return
	}
	for _, test := range slices.Sorted(maps.Keys(p.running)) {
		fmt.Fprintf(w, "--- DID NOT END: %s %s\n%s", p.name, test, strings.Join(testOutput(p.tests[test]), ""))
	}
	fmt.Fprint(w, strings.Join(p.output, ""))
}

func resultWord(p *pkgState) string {
	switch {
	case p.result == "fail":
		return "FAIL"
	case p.noFiles:
		return "none"
	case p.noTestsToRun:
		return "no run"
	case p.result == "":
		return "no end"
	}
	return "ok"
}

// testOutput drops the lines of the test framework that only say where the
// output of parallel tests resumes.
func testOutput(lines []string) []string {
	var out []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "=== RUN"), strings.HasPrefix(l, "=== PAUSE"),
			strings.HasPrefix(l, "=== CONT"), strings.HasPrefix(l, "=== NAME"):
			continue
		}
		out = append(out, l)
	}
	return out
}

// logPrefix is the file:line that t.Log and t.Skip put before a message.
var logPrefix = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

// skipReason is the message of a skipped test: its output without the
// framework's lines, the "--- SKIP" line and the file:line prefix, one line.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range testOutput(lines) {
		if strings.HasPrefix(strings.TrimSpace(l), "--- SKIP") {
			continue
		}
		if l = strings.TrimSpace(logPrefix.ReplaceAllString(l, "")); l != "" {
			msg = append(msg, l)
		}
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return strings.Join(msg, " | ")
}

// passedSomewhere reports whether the test named by name (PKG.TestName)
// passed.
func passedSomewhere(pkgs map[string]*pkgState, name string) bool {
	i := strings.LastIndex(name, ".")
	if i < 0 {
		return false
	}
	pkg, test := name[:i], name[i+1:]
	for path, p := range pkgs {
		if (path == pkg || strings.HasSuffix(path, "/"+pkg)) && p.passedTests[test] {
			return true
		}
	}
	return false
}
