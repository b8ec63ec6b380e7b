//go:build race

package e2e

// raceEnabled reports whether the tests were built with -race; the daemon
// under test is then built with -race too.
const raceEnabled = true
