// Package spareid spells the ids of a spare lease's uses
// (wsapi.SpareUseID), for the wire protocol and the scheduler alike: the
// scheduler imports nothing of the protocol, and the two must agree.
package spareid

import (
	"strconv"
	"strings"
)

// Use is the id of use n of spare lease id: the lease's id, a slash and n
// in base 36. Lease ids hold no slash otherwise.
func Use(id string, n uint64) string { return id + "/" + strconv.FormatUint(n, 36) }

// Lease returns the spare lease whose use id names, false when id names no
// use of one.
func Lease(id string) (string, bool) {
	i := strings.LastIndexByte(id, '/')
	if i <= 0 || i == len(id)-1 {
		return "", false
	}
	return id[:i], true
}
