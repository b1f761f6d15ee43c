package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// requestHead is what the entry node reads of a request body: the model to
// lease a worker for, and, for a Responses API follow-up, the response it
// continues.
type requestHead struct {
	Model              string `json:"model"`
	PreviousResponseID string `json:"previous_response_id"`
	// Stream is any JSON value: only true asks for a stream, and a
	// wrong type is the worker's to refuse, as before rbee read it.
	Stream any `json:"stream"`
	// What names a conversation, for prefix affinity (conversation.go): the
	// "user" field (any JSON value; only a string counts) and the start
	// of the messages, prompt or input.
	User any `json:"user"`
	// Raw, whatever their type: a wrong one is the worker's to refuse.
	Messages jsontext.Value `json:"messages"`
	Prompt   jsontext.Value `json:"prompt"`
	Input    jsontext.Value `json:"input"`
}

// maxFormModel bounds the model field read from a form: longer than any
// valid model name, so that ValidModel says what is wrong.
const maxFormModel = 1024

// readHead reads the head of a request body: from the fields of a
// multipart/form-data body (audio transcriptions and translations), else
// from a JSON object, whatever Content-Type says (curl -d says form data).
func readHead(contentType string, body []byte) (requestHead, error) {
	var head requestHead
	if boundary, ok := multipartBoundary(contentType); ok {
		model, err := formField(body, boundary, "model")
		if err != nil {
			return head, fmt.Errorf("multipart body: %w", err)
		}
		head.Model = model
		return head, nil
	}
	// JSON v2: it scans a long prompt about twice as fast as
	// encoding/json, and rejects what a worker might read differently
	// (duplicate keys, invalid UTF-8).
	if err := jsonv2.Unmarshal(body, &head); err != nil {
		return head, jsonBodyError(err)
	}
	return head, nil
}

// ParamError is a request error about one field of the body: OpenAI's
// error carries its name as "param", which clients show.
type ParamError struct {
	Param string
	Msg   string
}

func (e *ParamError) Error() string { return e.Msg }

// jsonBodyError says what is wrong with a body in a client's words, without
// the JSON library's names for itself.
func jsonBodyError(err error) error {
	var se *jsonv2.SemanticError
	if errors.As(err, &se) && se.JSONPointer != "" && se.GoType != nil {
		field := strings.TrimPrefix(string(se.JSONPointer), "/")
		want := map[string]string{"string": "a string", "bool": "true or false", "interface {}": "any value"}[se.GoType.String()]
		if want == "" {
			want = "another type"
		}
		return &ParamError{Param: field, Msg: fmt.Sprintf("%q must be %s, not %s", field, want, kindName(se.JSONKind))}
	}
	msg := err.Error()
	for _, p := range []string{"jsontext: ", "json: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return fmt.Errorf("body is not valid JSON: %s", msg)
}

func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string"
	case '0':
		return "a number"
	case 't', 'f':
		return "true or false"
	case 'n':
		return "null"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "something else"
}

// multipartBoundary returns the boundary of a multipart/form-data content
// type.
func multipartBoundary(contentType string) (string, bool) {
	// Nearly every request is JSON: its type is told apart without
	// ParseMediaType's map, twice per request.
	if t := strings.TrimLeft(contentType, " \t"); len(t) < len("multipart/") || !strings.EqualFold(t[:len("multipart/")], "multipart/") {
		return "", false
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return "", false
	}
	return params["boundary"], true
}

// formField returns the value of the first plain (not file) field called
// name in a multipart body, "" when there is none. File parts are skipped
// unread.
func formField(body []byte, boundary, name string) (string, error) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		if part.FormName() != name || part.FileName() != "" {
			continue
		}
		v, err := io.ReadAll(io.LimitReader(part, maxFormModel))
		if err != nil {
			return "", err
		}
		return string(v), nil
	}
}

// requestContentType is the Content-Type a request goes on with: a
// multipart form keeps its own (the boundary in it delimits the bytes that
// pass through unchanged); anything else was read as JSON, and is labelled
// so whatever the client said.
func requestContentType(h http.Header) string {
	ct := h.Get("Content-Type")
	if _, ok := multipartBoundary(ct); ok {
		return ct
	}
	return "application/json"
}
