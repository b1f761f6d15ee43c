package scheduler

import (
	"fmt"
	"net/http"
	"time"
)

// Per-key caps: a key's requests waiting or served at once (MaxConcurrent)
// and accepted per minute (PerMinute), counted cluster-wide at the queen.
// Over a cap a request is refused at once with a 429 and when to retry.

// keyUse is one key's requests now and its recent starts.
type keyUse struct {
	active int         // waiting plus leased
	recent []time.Time // accepted in the last minute, oldest first
}

// checkCaps refuses r when its key is over a cap.
func (s *Scheduler) checkCaps(r Request, now time.Time) *Error {
	if r.Key == "" || (r.MaxConcurrent <= 0 && r.PerMinute <= 0) {
		return nil
	}
	u := s.use(r.Key)
	for len(u.recent) > 0 && now.Sub(u.recent[0]) >= time.Minute {
		u.recent = u.recent[1:]
	}
	if r.MaxConcurrent > 0 && u.active >= r.MaxConcurrent {
		return &Error{Status: http.StatusTooManyRequests, Type: "rate_limit_exceeded", RetryAfter: s.cfg.RetryAfter,
			Msg: fmt.Sprintf("key %s has %d requests waiting or running, its max_concurrent; retry when one ends", r.Key, u.active)}
	}
	if r.PerMinute > 0 && len(u.recent) >= r.PerMinute {
		return &Error{Status: http.StatusTooManyRequests, Type: "rate_limit_exceeded",
			RetryAfter: max(time.Minute-now.Sub(u.recent[0]), time.Second),
			Msg:        fmt.Sprintf("key %s sent %d requests in the last minute, its requests_per_minute", r.Key, len(u.recent))}
	}
	return nil
}

// noteAccepted counts r, now granted or waiting, in its key's rate.
func (s *Scheduler) noteAccepted(r Request, now time.Time) {
	if r.Key == "" || r.PerMinute <= 0 {
		return
	}
	u := s.use(r.Key)
	u.recent = append(u.recent, now)
}

func (s *Scheduler) use(key string) *keyUse {
	if s.keyUse == nil {
		s.keyUse = make(map[string]*keyUse)
	}
	u := s.keyUse[key]
	if u == nil {
		u = &keyUse{}
		s.keyUse[key] = u
	}
	return u
}

// keyActive counts a request of key in (+1) or out (-1).
func (s *Scheduler) keyActive(key string, d int) {
	if key == "" {
		return
	}
	u := s.use(key)
	u.active = max(u.active+d, 0)
	if u.active == 0 && len(u.recent) == 0 {
		delete(s.keyUse, key)
	}
}

// KeyActive is how many requests of key wait or run now.
func (s *Scheduler) KeyActive(key string) int {
	if u := s.keyUse[key]; u != nil {
		return u.active
	}
	return 0
}
