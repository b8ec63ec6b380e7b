//go:build linux

package proxy

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// keyHash returns the i-th test key hash: a well-mixed 64-bit value, as the
// engine's hash of a session key would be.
func keyHash(i int) uint64 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return xxhash.Sum64(b[:])
}

func backendNames(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("10.0.0.%d:1194", i+1)
	}
	return s
}

func backendAddrs(n int) []netip.AddrPort {
	a := make([]netip.AddrPort, n)
	for i, name := range backendNames(n) {
		a[i] = netip.MustParseAddrPort(name)
	}
	return a
}

func mustMaglev(t testing.TB, backends []string, size int, down []bool) *Maglev {
	t.Helper()
	m, err := NewMaglev(backends, size, down)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const testKeys = 10000

func TestMaglevDistribution(t *testing.T) {
	for n := 2; n <= 8; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			m := mustMaglev(t, backendNames(n), 0, nil)

			// The fill gives every backend ⌊M/n⌋ or ⌈M/n⌉ slots.
			slots := make([]int, n)
			for _, b := range m.lookup {
				slots[b]++
			}
			for i, c := range slots {
				if c < DefaultTableSize/n || c > DefaultTableSize/n+1 {
					t.Errorf("backend %d owns %d slots, want %d or %d", i, c, DefaultTableSize/n, DefaultTableSize/n+1)
				}
			}

			// Keys land on slots at random, so over 10 k keys the shares
			// also carry sampling noise (σ ≈ 2.6 % of the mean for n = 8);
			// the slot counts above are the exact property, this checks
			// the end-to-end behaviour the engine sees.
			keys := make([]int, n)
			for i := range testKeys {
				keys[m.Pick(keyHash(i))]++
			}
			even := float64(testKeys) / float64(n)
			for i, c := range keys {
				if dev := math.Abs(float64(c)-even) / even; dev > 0.05 {
					t.Errorf("backend %d got %d of %d keys, %.1f %% off even (%.0f)", i, c, testKeys, dev*100, even)
				}
			}
		})
	}
}

func TestMaglevRemovalDisruption(t *testing.T) {
	for n := 2; n <= 8; n++ {
		names := backendNames(n)
		full := mustMaglev(t, names, 0, nil)
		for r := range n {
			t.Run(fmt.Sprintf("%d-without-%d", n, r), func(t *testing.T) {
				down := make([]bool, n)
				down[r] = true
				m := mustMaglev(t, names, 0, down)
				moved := 0
				for i := range testKeys {
					h := keyHash(i)
					after := m.Pick(h)
					if after == r {
						t.Fatalf("key %d picked removed backend %d", i, r)
					}
					if after != full.Pick(h) {
						moved++
					}
				}
				limit := 1/float64(n) + 0.02
				if frac := float64(moved) / testKeys; frac > limit {
					t.Errorf("%.2f %% of keys moved, want ≤ %.2f %%", frac*100, limit*100)
				}
			})
		}
	}
}

// TestMaglevDownMatchesSubset checks that marking backends down gives the
// same mapping (by name) as leaving them out of the list: that is what lets
// health rebuilds and configuration changes agree.
func TestMaglevDownMatchesSubset(t *testing.T) {
	names := backendNames(6)
	down := []bool{false, true, false, false, true, false}
	var subset []string
	for i, d := range down {
		if !d {
			subset = append(subset, names[i])
		}
	}
	a := mustMaglev(t, names, 0, down)
	b := mustMaglev(t, subset, 0, nil)
	for i := range testKeys {
		h := keyHash(i)
		if x, y := names[a.Pick(h)], subset[b.Pick(h)]; x != y {
			t.Fatalf("key %d: %s with backends down, %s with them removed", i, x, y)
		}
	}
}

func TestMaglevDeterminism(t *testing.T) {
	names := backendNames(5)
	a := mustMaglev(t, names, 0, nil)
	b := mustMaglev(t, append([]string(nil), names...), 0, nil)
	// Another instance configured with the same backends in another order.
	rev := []string{names[4], names[2], names[0], names[3], names[1]}
	c := mustMaglev(t, rev, 0, nil)
	for i := range testKeys {
		h := keyHash(i)
		if a.Pick(h) != b.Pick(h) {
			t.Fatalf("key %d: two tables from the same list disagree", i)
		}
		if names[a.Pick(h)] != rev[c.Pick(h)] {
			t.Fatalf("key %d: tables from reordered lists disagree", i)
		}
	}
}

// TestMaglevGolden pins the table contents, so that a change of seeds or of
// the fill, which would move sessions between instances running different
// versions, cannot go unnoticed.
func TestMaglevGolden(t *testing.T) {
	m := mustMaglev(t, []string{"vpn-a:1194", "vpn-b:1194", "vpn-c:51820"}, 0, nil)
	buf := make([]byte, 2*len(m.lookup))
	for i, v := range m.lookup {
		binary.LittleEndian.PutUint16(buf[2*i:], v)
	}
	const want = 0x15f84d61fdbb2095
	if got := xxhash.Sum64(buf); got != want {
		t.Errorf("table hash = %#x, want %#x: the Maglev mapping changed", got, want)
	}
}

func TestNewMaglevErrors(t *testing.T) {
	tests := []struct {
		name     string
		backends []string
		size     int
		down     []bool
		want     string // substring of the error; "" for success
	}{
		{"default size", backendNames(3), 0, nil, ""},
		{"small prime", backendNames(3), 7, nil, ""},
		{"short down slice", backendNames(3), 0, []bool{true}, ""},
		{"no backends", nil, 0, nil, "no backends"},
		{"empty name", []string{"a:1", ""}, 0, nil, "empty"},
		{"duplicate", []string{"a:1", "b:1", "a:1"}, 0, nil, "twice"},
		{"not prime", backendNames(3), 65536, nil, "prime"},
		{"one", backendNames(1), 1, nil, "prime"},
		{"not above backend count", backendNames(3), 3, nil, "prime"},
		{"negative", backendNames(3), -7, nil, "prime"},
		{"too large", backendNames(3), 1<<24 + 43, nil, "prime"},
		{"all down", backendNames(2), 0, []bool{true, true}, "no backend is up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMaglev(tt.backends, tt.size, tt.down)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestMaglevSmallTableCoversUpBackends(t *testing.T) {
	m := mustMaglev(t, backendNames(4), 7, []bool{false, true, false, false})
	seen := map[int]bool{}
	for _, b := range m.lookup {
		seen[int(b)] = true
	}
	if len(seen) != 3 || seen[1] {
		t.Fatalf("backends in table = %v, want 0, 2 and 3", seen)
	}
}

func TestIsPrime(t *testing.T) {
	var got []int
	for n := -3; n < 40; n++ {
		if isPrime(n) {
			got = append(got, n)
		}
	}
	want := fmt.Sprint([]int{2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37})
	if fmt.Sprint(got) != want {
		t.Fatalf("primes below 40 = %v, want %v", got, want)
	}
	if !isPrime(DefaultTableSize) || isPrime(65535) {
		t.Fatal("isPrime wrong near DefaultTableSize")
	}
}

func TestMaglevPickAllocs(t *testing.T) {
	m := mustMaglev(t, backendNames(4), 0, nil)
	h := uint64(0)
	if a := testing.AllocsPerRun(1000, func() { h++; _ = m.Pick(h) }); a != 0 {
		t.Fatalf("Pick allocates %v times", a)
	}
}

func BenchmarkMaglevPick(b *testing.B) {
	m := mustMaglev(b, backendNames(8), 0, nil)
	b.ReportAllocs()
	sum := 0
	h := uint64(0x9e3779b97f4a7c15)
	for b.Loop() {
		// A cheap multiplicative step gives spread-out keys, so the table
		// is read from all over as with real traffic.
		h = h*6364136223846793005 + 1442695040888963407
		sum += m.Pick(h)
	}
	_ = sum
}

func BenchmarkNewMaglev(b *testing.B) {
	names := backendNames(8)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewMaglev(names, 0, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// placementEnv makes the test binary print placements and exit (see
// TestMaglevSameAcrossProcesses).
const placementEnv = "UDPMUX_TEST_PLACEMENTS"

// placements returns the backend a proxy with three backends gives each of
// 2000 clients' sessions, as one string.
func placements(t *testing.T) string {
	t.Helper()
	u := newUnit(t, 3, Config{})
	var b strings.Builder
	for i := range 2000 {
		s := u.open(fmt.Sprintf("198.51.%d.%d:%d", i/250, i%250, 1024+i))
		b.WriteString(upstreamOf(s).RemoteAddr().String())
		b.WriteByte(' ')
	}
	return b.String()
}

// TestMaglevSameAcrossProcesses: another process with the same backends,
// such as another host of a fleet, places every client on the same backend
// (nothing in the hash or the table is seeded per process), so a flow that
// ECMP moves to it finds its backend again.
func TestMaglevSameAcrossProcesses(t *testing.T) {
	if os.Getenv(placementEnv) != "" {
		fmt.Println(placements(t))
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMaglevSameAcrossProcesses$")
	cmd.Env = append(os.Environ(), placementEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the other process: %v", err)
	}
	mine := placements(t)
	theirs, _, _ := strings.Cut(string(out), "\n")
	if theirs != mine {
		t.Fatalf("the other process placed the clients differently:\n%.200s\n%.200s", theirs, mine)
	}
	if n := len(strings.Fields(mine)); n != 2000 {
		t.Fatalf("%d placements", n)
	}
}
