package models

import "testing"

func TestParseSimGPUs(t *testing.T) {
	cases := []struct {
		in      string
		want    []uint64
		wantErr bool
	}{
		{in: "2x24GiB", want: []uint64{24576, 24576}},
		{in: "80GiB,1x16000MiB", want: []uint64{81920, 16000}},
		{in: "8192", want: []uint64{8192}},
		{in: "0x24GiB", wantErr: true},
		{in: "2xlots", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range cases {
		got, err := ParseSimGPUs(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		for i, g := range got {
			if g.Index != i || !g.Simulated || g.TotalVRAMMB != tc.want[i] {
				t.Errorf("%q: gpu %d = %+v, want %d MiB", tc.in, i, g, tc.want[i])
			}
		}
	}
}
