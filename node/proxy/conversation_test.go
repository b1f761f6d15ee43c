package proxy

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConversation(t *testing.T) {
	turn1 := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}`
	turn2 := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}`
	other := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"bye"}]}`
	key := func(body, id string) string {
		r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		if id != "" {
			r.Header.Set(HeaderSessionID, id)
		}
		h, err := readHead("application/json", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return conversation(r, &h)
	}
	if a, b := key(turn1, ""), key(turn2, ""); a == "" || a != b {
		t.Fatalf("two turns of one chat: %q %q, want one key", a, b)
	}
	if key(turn1, "") == key(other, "") {
		t.Fatal("two chats share a key")
	}
	if got := key(turn1, "sess-1"); got != "s:sess-1" {
		t.Fatalf("X-Session-Id: %q", got)
	}
	if got := key(`{"model":"m","user":"u-7","messages":[]}`, ""); got != "u:u-7" {
		t.Fatalf("user: %q", got)
	}
	if got := key(`{"model":"m","prompt":"Once upon a time"}`, ""); !strings.HasPrefix(got, "h:") {
		t.Fatalf("prompt: %q", got)
	}
	if got := key(`{"model":"m","messages":"not a list"}`, ""); got != "" {
		t.Fatalf("messages of the wrong type: %q", got)
	}
	if got := key(`{"model":"m"}`, ""); got != "" {
		t.Fatalf("nothing to go by: %q", got)
	}
}
