package proxy

import (
	"encoding/json"
	"net/http"
)

// WriteError writes an error in the OpenAI error shape, which every OpenAI
// client already knows how to show. Every HTTP error a node answers is built
// here.
//
// The connection is closed after an error: net/http would otherwise read the
// rest of an unread request body before answering, and wait for as long as a
// client that never sends it likes.
func WriteError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": nil},
	})
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
