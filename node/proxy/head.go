package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"

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

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

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
		return head, fmt.Errorf("body is not valid JSON: %w", err)
	}
	return head, nil
}

// multipartBoundary returns the boundary of a multipart/form-data content
// type.
func multipartBoundary(contentType string) (string, bool) {
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
