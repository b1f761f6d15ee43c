package wsapi

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate_Lifecycle(t *testing.T) {
	cases := []struct {
		name   string
		change func(t *HiveTelemetry)
		ok     bool
	}{
		{name: "every field set", change: func(*HiveTelemetry) {}, ok: true},
		{name: "unknown managed state", change: func(t *HiveTelemetry) { t.Managed[0].State = "exploded" }},
		{name: "control characters in a fail reason", change: func(t *HiveTelemetry) { t.Catalog[0].FailReason = "bad\x1b[31m" }},
		{name: "empty catalog name", change: func(t *HiveTelemetry) { t.Catalog[0].Name = "" }},
		{name: "negative slots", change: func(t *HiveTelemetry) { t.Catalog[0].Slots = -1 }},
		{name: "instance with a slash", change: func(t *HiveTelemetry) { t.Managed[0].Instance = "../x" }},
		{name: "too many GPUs", change: func(t *HiveTelemetry) { t.GPUs = make([]GPUInfo, MaxGPUs+1) }},
		{name: "long unavailable reason", change: func(t *HiveTelemetry) { t.Catalog[0].Unavailable = strings.Repeat("x", 300) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tel := lifecycleTelemetry()
			tc.change(tel)
			err := tel.Validate(tel.HiveID)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("Validate: %v, want ok=%v (or ErrInvalid)", err, tc.ok)
			}
		})
	}
}

func TestModelStart_Validate(t *testing.T) {
	good := ModelStart{Type: TypeModelStart, StartID: "q.s1", Model: "m", Evict: []string{"41234"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []ModelStart{
		{StartID: "", Model: "m"},
		{StartID: "s", Model: ""},
		{StartID: "s", Model: "m", Evict: []string{"a/b"}},
		{StartID: "s", Model: "m", GPUs: make([]int, MaxGPUs+1)},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
}
