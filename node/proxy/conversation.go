package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sync"

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
	if head.Messages.Kind() == '[' {
		start, first = chatStart(head.Messages)
	}
	if len(start) == 0 {
		first = true
		switch {
		case len(head.Prompt) > 0:
			start = head.Prompt
		case len(head.Input) > 0:
			start = head.Input
		}
	}
	if len(start) == 0 {
		return "", nil, false
	}
	return "h", start[:min(len(start), conversationBytes)], first
}

// chatStart is the start of a chat's messages (msgs, a JSON array): the
// messages, each as it came, up to the first user message, and no more than
// conversationBytes of them; all reports whether that is every message (the
// conversation's first turn). None when msgs holds no message.
//
// A pooled pair of decoders reads the array and each message's role in
// place: a decoder, and a copy of the messages, for each of a chat's
// messages were a few percent of an entry node's CPU.
func chatStart(msgs jsontext.Value) (start []byte, all bool) {
	cr := chatReaders.Get().(*chatReader)
	defer cr.put()
	cr.arrBuf = *bytes.NewBuffer(msgs)
	d := cr.arr
	d.Reset(&cr.arrBuf)
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '[' {
		return nil, false
	}
	for d.PeekKind() != ']' {
		m, err := d.ReadValue()
		if err != nil {
			return nil, false
		}
		if start == nil {
			start = make([]byte, 0, min(len(msgs), conversationBytes))
		}
		start = append(start, m[:min(len(m), conversationBytes-len(start))]...)
		if len(start) >= conversationBytes || cr.isUser(m) {
			return start, d.PeekKind() == ']'
		}
	}
	return start, true
}

// chatReader holds chatStart's decoders between requests; each reads a
// bytes.Buffer over the body, which it parses in place.
type chatReader struct {
	arr, msg       *jsontext.Decoder
	arrBuf, msgBuf bytes.Buffer
	none           bytes.Buffer // what the decoders hold between uses
}

var chatReaders = sync.Pool{New: func() any {
	cr := &chatReader{}
	cr.arr, cr.msg = jsontext.NewDecoder(&cr.none), jsontext.NewDecoder(&cr.none)
	return cr
}}

// put lets go of the body and pools cr.
func (cr *chatReader) put() {
	cr.arr.Reset(&cr.none)
	cr.msg.Reset(&cr.none)
	cr.arrBuf, cr.msgBuf = bytes.Buffer{}, bytes.Buffer{}
	chatReaders.Put(cr)
}

// isUser reports whether chat message m's role is "user". It reads no
// further than the role: it comes first in most messages, before content
// of any length.
func (cr *chatReader) isUser(m jsontext.Value) bool {
	cr.msgBuf = *bytes.NewBuffer(m)
	cr.msg.Reset(&cr.msgBuf)
	return readsUserRole(cr.msg)
}

// readsUserRole reports whether the message dec reads, from its start, is
// an object whose "role" is "user".
func readsUserRole(dec *jsontext.Decoder) bool {
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
