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

func TestLossFreeRuns(t *testing.T) {
	r := &result{Runs: []run{{LossPct: 0}, {LossPct: 0.99}, {LossPct: 1}, {LossPct: 33}}}
	if got, want := lossFreeRuns(r), "2 of 4 runs < 1 %"; got != want {
		t.Errorf("lossFreeRuns = %q, want %q", got, want)
	}
}
