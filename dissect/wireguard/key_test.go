package wireguard

import (
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/udpmux/udpmux/internal/prereq"
)

func TestLoadPrivateKey(t *testing.T) {
	want := testKey(t, "server").priv
	enc := base64.StdEncoding.EncodeToString(want[:])
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		errHas  []string // empty: must succeed
	}{
		{"as wg genkey writes it", enc + "\n", 0o600, nil},
		{"no newline", enc, 0o600, nil},
		{"spaces around", "  " + enc + " \r\n\n", 0o400, nil},
		{"group may read", enc + "\n", 0o640, []string{"0640", "group or others", "chmod 600"}},
		{"others may read", enc + "\n", 0o604, []string{"0604", "chmod 600"}},
		{"group may write", enc + "\n", 0o620, []string{"chmod 600"}},
		{"others may execute", enc + "\n", 0o601, []string{"chmod 600"}},
		{"empty", "", 0o600, []string{"44 characters"}},
		{"short", enc[:43], 0o600, []string{"44 characters"}},
		{"long", enc + "A", 0o600, []string{"44 characters"}},
		{"two keys", enc + "\n" + enc + "\n", 0o600, []string{"44 characters"}},
		{"not base64", strings.Repeat("!", 44), 0o600, []string{"44 characters"}},
		{"33 bytes of base64", base64.StdEncoding.EncodeToString(make([]byte, 33)), 0o600, []string{"44 characters"}},
		{"large file", strings.Repeat("A", 1<<20), 0o600, []string{"44 characters"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			got, err := LoadPrivateKey(path)
			if len(tc.errHas) == 0 {
				if err != nil || got != want {
					t.Fatalf("LoadPrivateKey = %x, %v; want %x", got, err, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadPrivateKey accepted it: %x", got)
			}
			if got != ([32]byte{}) {
				t.Errorf("key %x returned with the error", got)
			}
			for _, s := range append(tc.errHas, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

func TestLoadPrivateKeyNotAFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing")); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := LoadPrivateKey(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		prereq.Missing(t, "mkfifo:", err)
	}
	// Opening a FIFO without a writer must not block.
	if _, err := LoadPrivateKey(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO: %v", err)
	}
}

func TestLoadPrivateKeyOtherOwner(t *testing.T) {
	key := testKey(t, "server").priv
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if os.Geteuid() == nobody {
		prereq.Missing(t, "running as uid 65534")
	}
	if err := os.Chown(path, nobody, -1); err != nil {
		prereq.Missing(t, "cannot give the file to another user (needs root):", err)
	}
	_, err := LoadPrivateKey(path)
	if err == nil {
		t.Fatal("LoadPrivateKey accepted another user's file")
	}
	for _, s := range []string{"uid 65534", "chown", path} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}
