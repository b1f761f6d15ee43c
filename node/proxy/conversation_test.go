package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConversation(t *testing.T) {
	turn1 := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}`
	turn2 := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}`
	other := `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"bye"}]}`
	// of is a chat request with body and session id (none when "").
	of := func(body, id string) (*http.Request, *requestHead) {
		r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		if id != "" {
			r.Header.Set(HeaderSessionID, id)
		}
		h, err := readHead("application/json", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return r, &h
	}
	key := func(tenant, body, id string) string {
		r, h := of(body, id)
		c, _ := conversationOf(r, h, tenant)
		return c
	}
	if a, b := key("bob", turn1, ""), key("bob", turn2, ""); a == "" || a != b {
		t.Fatalf("two turns of one chat: %q %q, want one key", a, b)
	}
	first := func(body, id string) bool {
		r, h := of(body, id)
		_, f := conversationOf(r, h, "bob")
		return f
	}
	if !first(turn1, "") || first(turn2, "") || first(turn1, "s1") {
		t.Fatalf("first turn: %v %v %v, want true for a chat's start, false for a later turn and for a session", first(turn1, ""), first(turn2, ""), first(turn1, "s1"))
	}
	if key("bob", turn1, "") == key("bob", other, "") {
		t.Fatal("two chats share a key")
	}
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name         string
		tenant, body string
		id           string
		kind         string // of the conversation; "" for none
	}{
		{"session id", "bob", turn1, "sess-1", "s:"},
		{"user field", "bob", `{"model":"m","user":"u-7","messages":[]}`, "", "u:"},
		{"prompt", "bob", `{"model":"m","prompt":"Once upon a time"}`, "", "h:"},
		{"no tenant", "", turn1, "sess-1", "s:"},
		{"a session id past what a lease request carries", "bob", turn1, long, "s:"},
		{"messages of the wrong type", "bob", `{"model":"m","messages":"not a list"}`, "", ""},
		{"nothing to go by", "bob", `{"model":"m"}`, "", ""},
	} {
		got := key(tc.tenant, tc.body, tc.id)
		if tc.kind == "" {
			if got != "" {
				t.Errorf("%s: %q, want none", tc.name, got)
			}
			continue
		}
		if !strings.HasPrefix(got, tc.kind) || len(got) != len(tc.kind)+32 {
			t.Errorf("%s: %q, want %s and 32 hex digits", tc.name, got, tc.kind)
		}
		if got != key(tc.tenant, tc.body, tc.id) {
			t.Errorf("%s: two names for one conversation", tc.name)
		}
	}
	// What names bob's conversation names another for any other key, or
	// without one.
	for _, c := range []struct{ body, id string }{{turn1, "sess-1"}, {`{"model":"m","user":"u-7"}`, ""}, {turn1, ""}} {
		bob := key("bob", c.body, c.id)
		for _, tenant := range []string{"mallory", "", "bo", "bobb"} {
			if got := key(tenant, c.body, c.id); got == bob {
				t.Errorf("tenant %q shares bob's conversation %q (session %q)", tenant, bob, c.id)
			}
		}
	}
	if key("bob", turn1, long) == key("bob", turn1, long+"y") {
		t.Error("two session ids alike in their first 300 bytes share a conversation")
	}
}
