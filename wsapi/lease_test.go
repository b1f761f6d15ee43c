package wsapi

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestLeaseMessages_Validate(t *testing.T) {
	long := strings.Repeat("x", 600)
	cases := []struct {
		name string
		msg  interface{ Validate() error }
		ok   bool
	}{
		{"request", &LeaseRequest{RequestID: "e.1", Model: "m", WaitMS: 1000}, true},
		{"request without id", &LeaseRequest{Model: "m"}, false},
		{"request without model", &LeaseRequest{RequestID: "e.1"}, false},
		{"request with a control character", &LeaseRequest{RequestID: "e.1", Model: "m\n"}, false},
		{"request with a long model", &LeaseRequest{RequestID: "e.1", Model: long}, false},
		{"request waiting negative", &LeaseRequest{RequestID: "e.1", Model: "m", WaitMS: -1}, false},
		{"request waiting forever", &LeaseRequest{RequestID: "e.1", Model: "m", WaitMS: MaxWait.Milliseconds() + 1}, false},
		{"request for a worker", &LeaseRequest{RequestID: "e.1", Model: "m", Hive: "b", Worker: "llm/8080"}, true},
		{"request for a worker without its hive", &LeaseRequest{RequestID: "e.1", Model: "m", Worker: "llm/8080"}, false},
		{"request for a hive without a worker", &LeaseRequest{RequestID: "e.1", Model: "m", Hive: "b"}, false},
		{"request for a worker that is not group/instance", &LeaseRequest{RequestID: "e.1", Model: "m", Hive: "b", Worker: "8080"}, false},
		{"request for a worker with a slash too many", &LeaseRequest{RequestID: "e.1", Model: "m", Hive: "b", Worker: "llm/80/80"}, false},
		{"request for a worker on a badly named hive", &LeaseRequest{RequestID: "e.1", Model: "m", Hive: "b c", Worker: "llm/8080"}, false},
		{"request avoiding a worker and a hive", &LeaseRequest{RequestID: "e.1", Model: "m", Avoid: []Placement{{Hive: "b", Worker: "llm/8080"}, {Hive: "c"}}}, true},
		{"request avoiding a badly named hive", &LeaseRequest{RequestID: "e.1", Model: "m", Avoid: []Placement{{Hive: "b c"}}}, false},
		{"request avoiding a worker that is not group/instance", &LeaseRequest{RequestID: "e.1", Model: "m", Avoid: []Placement{{Hive: "b", Worker: "8080"}}}, false},
		{"request avoiding too much", &LeaseRequest{RequestID: "e.1", Model: "m", Avoid: make([]Placement, MaxAvoid+1)}, false},
		{"request shunning a hive", &LeaseRequest{RequestID: "e.1", Model: "m", Elsewhere: []string{"b"}}, true},
		{"traced request", &LeaseRequest{RequestID: "e.1", Model: "m", Trace: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, true},
		{"request with a trace holding a control character", &LeaseRequest{RequestID: "e.1", Model: "m", Trace: "00-\n"}, false},
		{"request with an overlong trace", &LeaseRequest{RequestID: "e.1", Model: "m", Trace: strings.Repeat("0", 300)}, false},
		{"request shunning a badly named hive", &LeaseRequest{RequestID: "e.1", Model: "m", Elsewhere: []string{""}}, false},
		{"cancel", &LeaseCancel{RequestID: "e.1"}, true},
		{"cancel without id", &LeaseCancel{}, false},
		{"release", &LeaseRelease{LeaseID: "q.1"}, true},
		{"release without id", &LeaseRelease{}, false},
		{"release with a long id", &LeaseRelease{LeaseID: long}, false},
	}
	for _, c := range cases {
		err := c.msg.Validate()
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: %v, want ok=%v (errors wrap ErrInvalid)", c.name, err, c.ok)
		}
	}
}

func TestTelemetry_ValidatesLeases(t *testing.T) {
	good := validTelemetry(1)
	good.Leases = []LeaseInfo{{LeaseID: "q.1", Worker: "llm/8080", Model: "m", Entry: "e"}}
	if err := good.Validate(good.HiveID); err != nil {
		t.Fatalf("valid leases refused: %v", err)
	}
	for name, l := range map[string]LeaseInfo{
		"no id":      {Worker: "llm/8080", Entry: "e"},
		"no worker":  {LeaseID: "q.1", Entry: "e"},
		"no entry":   {LeaseID: "q.1", Worker: "llm/8080"},
		"bad model":  {LeaseID: "q.1", Worker: "llm/8080", Entry: "e", Model: "a\x00b"},
		"long entry": {LeaseID: "q.1", Worker: "llm/8080", Entry: strings.Repeat("e", 300)},
	} {
		bad := validTelemetry(1)
		bad.Leases = []LeaseInfo{l}
		if err := bad.Validate(bad.HiveID); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// TestLeaseRequest_TraceIsAnAddition: a queen from before the trace field
// reads a traced request as an untraced one, and a traced request from an
// entry node reads the same as before to it.
func TestLeaseRequest_TraceIsAnAddition(t *testing.T) {
	traced := []byte(`{"type":"lease_request","request_id":"e.1","model":"m","wait_ms":1000,"trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`)
	msg, err := Decode(traced)
	if err != nil {
		t.Fatal(err)
	}
	m := msg.(*LeaseRequest)
	if m.Trace != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" || m.Validate() != nil {
		t.Errorf("decoded %+v (valid: %v)", m, m.Validate())
	}
	// An old queen's LeaseRequest: the same fields but trace.
	var old struct {
		Type      string `json:"type"`
		RequestID string `json:"request_id"`
		Model     string `json:"model"`
		WaitMS    int64  `json:"wait_ms"`
	}
	if err := json.Unmarshal(traced, &old); err != nil || old.RequestID != "e.1" || old.WaitMS != 1000 {
		t.Errorf("an old queen reads %+v, %v", old, err)
	}
	out, err := json.Marshal(&LeaseRequest{Type: TypeLeaseRequest, RequestID: "e.1", Model: "m"})
	if err != nil || strings.Contains(string(out), "trace") {
		t.Errorf("an untraced request is sent as %s (%v): want no trace field", out, err)
	}
}
