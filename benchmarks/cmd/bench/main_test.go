package main

import (
	"maps"
	"slices"
	"testing"
)

func TestParseOnly(t *testing.T) {
	tests := []struct {
		list    string
		want    []string // nil: everything runs
		wantErr bool
	}{
		{list: "", want: nil},
		{list: "proxy", want: []string{"proxy"}},
		{list: "sink,flowtable", want: []string{"flowtable", "sink"}},
		{list: "proxy,proxy", want: []string{"proxy"}},
		{list: "nginx", wantErr: true},
		{list: "proxy,", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseOnly(tt.list)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseOnly(%q) error = %v, want error %v", tt.list, err, tt.wantErr)
			continue
		}
		if tt.wantErr {
			continue
		}
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tt.want) {
			t.Errorf("parseOnly(%q) = %v, want %v", tt.list, keys, tt.want)
		}
		o := options{only: got}
		for _, p := range parts {
			if want := tt.want == nil || slices.Contains(tt.want, p); o.includes(p) != want {
				t.Errorf("parseOnly(%q): includes(%q) = %v, want %v", tt.list, p, o.includes(p), want)
			}
		}
	}
}

func TestParseRates(t *testing.T) {
	got, err := parseRates("20000, 40000")
	if err != nil || !slices.Equal(got, []float64{20000, 40000}) {
		t.Errorf("parseRates = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "20000,"} {
		if _, err := parseRates(bad); err == nil {
			t.Errorf("parseRates(%q) did not fail", bad)
		}
	}
}

func TestTopSymbols(t *testing.T) {
	report := `# Samples: 10K of event 'cpu-clock'
#
# Overhead  Shared Object      Symbol
# ........  .................  ......
#
    31.02%  [kernel.kallsyms]  [k] handle_softirqs
     9.10%  [kernel.kallsyms]  [k] native_write_msr
     5.00%  udpmux             [.] github.com/udpmux/udpmux/mux.(*loop).run

`
	got := topSymbols(report, 2)
	want := "    31.02%  [kernel.kallsyms]  [k] handle_softirqs\n     9.10%  [kernel.kallsyms]  [k] native_write_msr"
	if got != want {
		t.Errorf("topSymbols = %q, want %q", got, want)
	}
}
