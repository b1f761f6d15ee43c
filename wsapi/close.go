package wsapi

import (
	"errors"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Close codes. Standard codes where one fits; 40xx for rbee's own reasons so a
// client can tell "go elsewhere" from "you are broken".
const (
	// CloseGoingAway: the node is shutting down; redial (maybe another node).
	CloseGoingAway = websocket.StatusGoingAway
	// CloseUnknownType: a message type this peer does not speak.
	CloseUnknownType = websocket.StatusUnsupportedData
	// CloseMalformed: bad JSON, a wrong field type or an invalid value.
	CloseMalformed = websocket.StatusInvalidFramePayloadData
	// CloseAuth: missing or wrong cluster key proof.
	CloseAuth = websocket.StatusPolicyViolation
	// CloseTooBig is sent by the websocket library itself when a frame
	// exceeds the read limit.
	CloseTooBig = websocket.StatusMessageTooBig

	// CloseNotQueen: this node stopped being queen; redial the new one.
	CloseNotQueen websocket.StatusCode = 4001
	// CloseReplaced: a newer session from the same hive took over.
	CloseReplaced websocket.StatusCode = 4002
	// CloseTooSlow: a feed reader fell behind and was dropped so it could
	// not slow the queen down.
	CloseTooSlow websocket.StatusCode = 4003
	// CloseProtocol: incompatible protocol version, or a message out of turn.
	CloseProtocol websocket.StatusCode = 4004
)

// CloseCodeFor maps a decode or validation error to the close code a peer sees.
func CloseCodeFor(err error) websocket.StatusCode {
	switch {
	case errors.Is(err, ErrUnknownType):
		return CloseUnknownType
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrInvalid):
		return CloseMalformed
	default:
		return websocket.StatusInternalError
	}
}

// CloseReason trims a reason to what a close frame can carry (123 bytes),
// keeping UTF-8 valid.
func CloseReason(s string) string {
	const max = 123
	if len(s) <= max {
		return s
	}
	s = s[:max]
	// Drop the last character only if the cut went through it.
	i := len(s) - 1
	for i > 0 && i > len(s)-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	if !utf8.FullRuneInString(s[i:]) {
		s = s[:i]
	}
	return s
}

// CloseText renders why a session ended, for a log line.
func CloseText(err error) string {
	if err == nil {
		return "closed"
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return ce.Code.String() + ": " + ce.Reason
		}
		return ce.Code.String()
	}
	return err.Error()
}
