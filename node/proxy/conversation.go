package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// HeaderSessionID names a conversation: its turns go to the worker that
// holds its prompt in its KV cache.
const HeaderSessionID = "X-Session-Id"

// conversationBytes is how much of a conversation's start names it: enough
// to tell conversations apart (a system prompt and the first question),
// little enough to hash in microseconds.
const conversationBytes = 1024

// conversationOf names the conversation a request continues, for prefix
// affinity, within the tenant (tenants.Tenant.Scope): the
// X-Session-Id header, else the OpenAI "user" field, else the conversation's
// start (its messages up to the first user message, or the first bytes of a
// prompt or input), which every later turn repeats. "" when there is nothing
// to go by.
//
// The tenant is hashed in: another key sending bob's session id, user or
// prompt names another conversation, so it can neither move bob's turns off
// the worker that holds his prompt nor time that worker's cache for it. The
// hash also bounds the name, however long the header, to what a lease
// request may carry.
//
// It also says whether the request is the conversation's first turn: a
// chat's messages up to its first user message and no further, or a prompt
// or input (whose next turn cannot be told from a new request). A session
// id or user names a conversation that may have had turns before.
func conversationOf(r *http.Request, head *requestHead, tenant string) (string, bool) {
	kind, name, first := conversationName(r, head)
	if kind == "" {
		return "", false
	}
	h := sha256.New()
	h.Write([]byte(tenant))
	h.Write([]byte{0}) // no tenant name holds a NUL: "ab"+"c" is not "a"+"bc"
	h.Write(name)
	return kind + ":" + hex.EncodeToString(h.Sum(nil)[:16]), first
}

// conversationName is what names a request's conversation, and its kind:
// "s" (a session id), "u" (a user) or "h" (the conversation's start).
func conversationName(r *http.Request, head *requestHead) (kind string, name []byte, first bool) {
	if s := r.Header.Get(HeaderSessionID); s != "" {
		return "s", []byte(s), false
	}
	if u, ok := head.User.(string); ok && u != "" {
		return "u", []byte(u), false
	}
	var start []byte
	var msgs []jsontext.Value
	if head.Messages.Kind() == '[' {
		_ = jsonv2.Unmarshal(head.Messages, &msgs)
	}
	first = true
	switch {
	case len(msgs) > 0:
		for i, m := range msgs {
			start = append(start, m...)
			if len(start) >= conversationBytes || isUserMessage(m) {
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
		return "", nil, false
	}
	return "h", start[:min(len(start), conversationBytes)], first
}

// isUserMessage reports whether a chat message's role is "user".
func isUserMessage(m jsontext.Value) bool {
	dec := jsontext.NewDecoder(bytesReader(m))
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return false
	}
	for dec.PeekKind() != '}' {
		k, err := dec.ReadToken()
		if err != nil {
			return false
		}
		if k.String() == "role" {
			v, err := dec.ReadToken()
			return err == nil && v.String() == "user"
		}
		if err := dec.SkipValue(); err != nil {
			return false
		}
	}
	return false
}
