package proxy

import (
	"encoding/json"
	"net/http"
)

// WriteError writes an error in OpenAI's error shape, which every OpenAI
// client already knows how to show: code is what clients branch on
// (err.code: "model_not_found", "invalid_api_key", "rate_limit_exceeded",
// ...; the generic "invalid_request_error" is sent as null, as OpenAI does
// for a plain bad request), and type is OpenAI's category for the status.
// Every HTTP error a node answers is built here.
//
// The connection is closed after an error: net/http would otherwise read the
// rest of an unread request body before answering, and wait for as long as a
// client that never sends it likes.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(withRequestID(w, code, ErrorBody(status, code, msg)))
}

// withRequestID adds the request's id (observe.go) to an error body, so that
// a client's bug report names the request, and notes the error code for the
// access log.
func withRequestID(w http.ResponseWriter, code string, body map[string]any) map[string]any {
	noteError(w, code)
	if id := w.Header().Get(HeaderRequestID); id != "" {
		body["error"].(map[string]any)["request_id"] = id
	}
	return body
}

// WriteParamError is WriteError for an error about one field of the
// request, which OpenAI names as "param".
func WriteParamError(w http.ResponseWriter, status int, code, msg, param string) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := withRequestID(w, code, ErrorBody(status, code, msg))
	body["error"].(map[string]any)["param"] = param
	_ = json.NewEncoder(w).Encode(body)
}

// ErrorBody is the OpenAI error document for status, code and msg.
func ErrorBody(status int, code, msg string) map[string]any {
	var c any = code
	if code == "" || code == "invalid_request_error" {
		c = nil
	}
	return map[string]any{
		"error": map[string]any{"message": msg, "type": errorType(status), "param": nil, "code": c},
	}
}

// errorType is OpenAI's error type for an HTTP status.
func errorType(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "requests"
	case status >= 500:
		return "server_error"
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	}
	return "invalid_request_error"
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// TruncateText shortens text a client sent before it is quoted in an error.
func TruncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
