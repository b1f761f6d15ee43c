package proxy

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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

// conversationNameBefore is conversationName as it was before chatStart
// (the messages unmarshaled whole, a new decoder for each one's role, read
// as chatStart reads it): a conversation must keep its name across
// versions, or a rolling upgrade moves chats off the workers that hold
// their prompts.
func conversationNameBefore(head *requestHead) (name []byte, first bool) {
	var start []byte
	var msgs []jsontext.Value
	if head.Messages.Kind() == '[' {
		_ = jsonv2.Unmarshal(head.Messages, &msgs)
	}
	isUser := func(m jsontext.Value) bool { return readsUserRole(jsontext.NewDecoder(bytes.NewReader(m))) }
	first = true
	switch {
	case len(msgs) > 0:
		for i, m := range msgs {
			start = append(start, m...)
			if len(start) >= conversationBytes || isUser(m) {
				first = i == len(msgs)-1
				break
			}
		}
	case len(head.Prompt) > 0:
		start = head.Prompt
	case len(head.Input) > 0:
		start = head.Input
	}
	if len(start) == 0 {
		return nil, false
	}
	return start[:min(len(start), conversationBytes)], first
}

// Random chats, prompts and odd shapes name the same conversation, and the
// same first turn, as before chatStart.
func TestConversation_NamesAsBefore(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	roles := []string{`"system"`, `"user"`, `"assistant"`, `"tool"`, `"us\u0065r"`, `"User"`, `7`, `null`, `{"x":"user"}`}
	message := func() string {
		var fields []string
		if rng.IntN(8) > 0 {
			fields = append(fields, `"role": `+roles[rng.IntN(len(roles))])
		}
		if rng.IntN(4) > 0 {
			fields = append(fields, `"content":`+strconv.Quote(strings.Repeat("word ", rng.IntN(120))))
		}
		if rng.IntN(3) == 0 {
			fields = append(fields, `"name":"n","extra":[1,{"role":"user"}]`)
		}
		rng.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
		switch rng.IntN(12) {
		case 0:
			return `"just a string"`
		case 1:
			return `[{"role":"user"}]`
		}
		return "{ " + strings.Join(fields, " ,\n ") + " }"
	}
	bodies := []string{
		`{"model":"m","messages":[]}`,
		`{"model":"m","messages":[],"prompt":"p"}`,
		`{"model":"m","messages":{"role":"user"},"input":"in"}`,
		`{"model":"m","messages":null,"prompt":["a","b"]}`,
		`{"model":"m","prompt":""}`,
	}
	for range 2000 {
		msgs := make([]string, rng.IntN(12))
		for i := range msgs {
			msgs[i] = message()
		}
		body := `{"model":"m", "messages": [ ` + strings.Join(msgs, " , ") + ` ]`
		if rng.IntN(4) == 0 {
			body += `, "prompt": "also"`
		}
		bodies = append(bodies, body+"}")
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
	for _, body := range bodies {
		head, err := readHead("application/json", []byte(body))
		if err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		wantName, wantFirst := conversationNameBefore(&head)
		kind, name, first := conversationName(r, &head)
		if (kind == "") != (wantName == nil) || !bytes.Equal(name, wantName) || first != wantFirst {
			t.Fatalf("body %s\nnamed %q %q first %v, want %q first %v", body, kind, name, first, wantName, wantFirst)
		}
	}
}

// BenchmarkConversationName names a 6-message chat's conversation (a system
// prompt, then turns; the name is its start up to the first user message)
// now and as before chatStart.
func BenchmarkConversationName(b *testing.B) {
	msgs := []string{`{"role":"system","content":` + strconv.Quote(strings.Repeat("Be brief. ", 40)) + `}`}
	for i := range 5 {
		role := []string{"user", "assistant"}[i%2]
		msgs = append(msgs, `{"role":"`+role+`","content":`+strconv.Quote(strings.Repeat("more words ", 30))+`}`)
	}
	body := `{"model":"m","messages":[` + strings.Join(msgs, ",") + `]}`
	head, err := readHead("application/json", []byte(body))
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
	b.Run("now", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			conversationName(r, &head)
		}
	})
	b.Run("before", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			conversationNameBefore(&head)
		}
	})
}

// FuzzConversationName: whatever a client sends, its conversation's name
// is what it was before chatStart, and naming it never panics.
func FuzzConversationName(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"system","content":"x"},{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"content":"x","role":"us\u0065r"},{"role":"assistant"}]}`,
		`{"model":"m","messages":[[],"s",7,{"role":{"a":1}},{"role":"user"}]}`,
		`{"model":"m","messages":[],"prompt":"p"}`,
		`{"model":"m","messages":{},"input":[1,2]}`,
	} {
		f.Add(s)
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
	f.Fuzz(func(t *testing.T, body string) {
		head, err := readHead("application/json", []byte(body))
		if err != nil {
			return
		}
		wantName, wantFirst := conversationNameBefore(&head)
		kind, name, first := conversationName(r, &head)
		if (kind == "") != (wantName == nil) || !bytes.Equal(name, wantName) || first != wantFirst {
			t.Fatalf("named %q %q first %v, want %q first %v", kind, name, first, wantName, wantFirst)
		}
	})
}
