package prereq

import (
	"errors"
	"slices"
	"testing"
)

// recorder is a testing.TB that records how the test was ended instead of
// ending it.
type recorder struct {
	testing.TB
	fatal, skip []string
}

func (r *recorder) Helper()           {}
func (r *recorder) Fatal(args ...any) { r.fatal = append(r.fatal, args[0].(string)) }
func (r *recorder) Skip(args ...any)  { r.skip = append(r.skip, args[0].(string)) }

func TestMissing(t *testing.T) {
	const why = " (CI=true: a missing prerequisite fails the test)"
	for _, tc := range []struct {
		ci          string
		fatal, skip []string
	}{
		{"", nil, []string{"mkfifo: no", "needs root: 7"}},
		{"1", nil, []string{"mkfifo: no", "needs root: 7"}},
		{"false", nil, []string{"mkfifo: no", "needs root: 7"}},
		{"true", []string{"mkfifo: no" + why, "needs root: 7" + why}, nil},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			Missing(r, "mkfifo:", errors.New("no"))
			Missingf(r, "needs root: %d", 7)
			if !slices.Equal(r.fatal, tc.fatal) || !slices.Equal(r.skip, tc.skip) {
				t.Errorf("failed with %q, skipped with %q; want %q, %q", r.fatal, r.skip, tc.fatal, tc.skip)
			}
		})
	}
}
