package scheduler

import (
	"net/http"
	"time"
)

// Error is a refusal with the HTTP status the entry node answers with.
type Error struct {
	Status int
	// Type is the OpenAI error type.
	Type       string
	Msg        string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// Is lets errors.Is match refusals by status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrUnknownModel = &Error{Status: http.StatusNotFound}
	ErrQueueFull    = &Error{Status: http.StatusTooManyRequests}
	ErrTimeout      = &Error{Status: http.StatusServiceUnavailable}
)

// Failure ends a waiting request without a lease.
type Failure struct {
	Request Request
	Err     *Error
}
