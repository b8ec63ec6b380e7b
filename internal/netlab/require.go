//go:build linux

package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/udpmux/udpmux/internal/prereq"
)

// Tool is a program that tests run and the Debian package that installs it.
type Tool struct {
	Name    string // the program, e.g. "nft"
	Package string // the Debian package that brings it, e.g. "nftables"
}

// The programs netlab and the end-to-end tests use.
var (
	ToolIP          = Tool{"ip", "iproute2"}
	ToolPing        = Tool{"ping", "iputils-ping"}
	ToolNft         = Tool{"nft", "nftables"}
	ToolConntrack   = Tool{"conntrack", "conntrack"}
	ToolWireGuardGo = Tool{"wireguard-go", "wireguard-go"}
	ToolWG          = Tool{"wg", "wireguard-tools"}
	ToolOpenVPN     = Tool{"openvpn", "openvpn"}
)

// systemDirs are searched after PATH: test environments (sudo, CI runners)
// often lack the sbin directories in PATH.
var systemDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"}

var (
	lookMu    sync.Mutex
	lookCache = map[string]lookResult{}
)

type lookResult struct {
	path string
	err  error
}

// LookPath finds the program name in PATH or, failing that, in the usual
// system directories, and returns its absolute path. Results are cached.
func LookPath(name string) (string, error) {
	lookMu.Lock()
	defer lookMu.Unlock()
	if r, ok := lookCache[name]; ok {
		return r.path, r.err
	}
	path, err := exec.LookPath(name)
	if err != nil {
		for _, d := range systemDirs {
			p := d + "/" + name
			if st, serr := os.Stat(p); serr == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				path, err = p, nil
				break
			}
		}
	}
	if err != nil {
		err = fmt.Errorf("%s: not found in PATH or %s", name, strings.Join(systemDirs, ", "))
	}
	lookCache[name] = lookResult{path, err}
	return path, err
}

// RequireTools skips the test unless every tool is installed, naming each
// missing one and the Debian package that brings it; under CI=true it fails
// the test instead (prereq.Missing).
func RequireTools(t testing.TB, tools ...Tool) {
	t.Helper()
	if msg := MissingTools(tools...); msg != "" {
		prereq.Missing(t, msg)
	}
}

// MissingTools returns "" when every tool is installed, else a message such
// as "needs nft (apt-get install -y nftables), wg (apt-get install -y
// wireguard-tools): not found in PATH or the system directories".
func MissingTools(tools ...Tool) string {
	var missing []string
	for _, tool := range tools {
		if _, err := LookPath(tool.Name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install -y %s)", tool.Name, tool.Package))
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "needs " + strings.Join(missing, ", ") + ": not found in PATH or the system directories"
}
