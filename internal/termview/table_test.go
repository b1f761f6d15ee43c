package termview

import (
	"reflect"
	"testing"
)

func TestTable_GivesWayInOrder(t *testing.T) {
	cols := []column{{name: "ID", shorten: 1, middle: true}, {name: "KEEP"}, {name: "A", drop: 2}, {name: "B", drop: 1}, {name: "M", shorten: 2}}
	rows := [][]string{{"node-000001", "k", "aaaa", "bbbb", "model-name-long"}}
	for _, tc := range []struct {
		width int
		want  []string
	}{
		{0, []string{"ID           KEEP  A     B     M", "node-000001  k     aaaa  bbbb  model-name-long"}},
		{46, []string{"ID           KEEP  A     B     M", "node-000001  k     aaaa  bbbb  model-name-long"}},
		{45, []string{"ID           KEEP  A     M", "node-000001  k     aaaa  model-name-long"}},
		{39, []string{"ID           KEEP  M", "node-000001  k     model-name-long"}},
		{33, []string{"ID          KEEP  M", "node-…0001  k     model-name-long"}},
		{30, []string{"ID       KEEP  M", "nod…001  k     model-name-long"}},
		{29, []string{"ID       KEEP  M", "nod…001  k     model-name-lo…"}},
		{20, []string{"ID       KEEP  M", "nod…001  k     model-…"}},
	} {
		got := table{cols: cols, rows: rows}.lines(tc.width)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("width %d:\n got %q\nwant %q", tc.width, got, tc.want)
		}
	}
}
