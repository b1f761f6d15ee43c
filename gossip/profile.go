package gossip

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// The gossip profiles an operator picks from by name (rbee node run
// --gossip-profile): one Timing each.
const (
	ProfileLAN = "lan" // LANTiming: one site, round trips of a millisecond
	ProfileWAN = "wan" // WANTiming: sites apart, round trips up to ~1 s
)

// Profiles lists the profile names, the default first.
var Profiles = []string{ProfileLAN, ProfileWAN}

// ErrUnknownProfile is returned by ProfileTiming for a name not in Profiles.
var ErrUnknownProfile = errors.New("unknown gossip profile")

// ProfileTiming returns the Timing a profile names.
func ProfileTiming(name string) (Timing, error) {
	switch name {
	case ProfileLAN:
		return LANTiming(), nil
	case ProfileWAN:
		return WANTiming(), nil
	}
	return Timing{}, fmt.Errorf("%w %q (want %s or %s)", ErrUnknownProfile, name, ProfileLAN, ProfileWAN)
}

// Detection is what a Timing means for finding a member that went silent,
// computed as memberlist computes its timeouts, for an operator to weigh.
type Detection struct {
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	// SuspicionMin is how long a suspect member has to refute once other
	// members confirm the suspicion (or at once in a cluster too small to
	// expect confirmations); SuspicionMax, when none does.
	SuspicionMin time.Duration
	SuspicionMax time.Duration
	// Expected is about how long after a member goes silent the others
	// declare it dead: a probe interval until one probes it, one for the
	// probe and its indirect and TCP retries, then the confirmed
	// suspicion. Worst has the unconfirmed suspicion instead.
	Expected time.Duration
	Worst    time.Duration
}

// Detection returns t's failure detection figures in a cluster of n members.
func (t Timing) Detection(n int) Detection {
	t = Config{Timing: t}.withDefaults().Timing
	// memberlist scales the suspicion by log10 of the cluster size, never
	// below 1, and needs SuspicionMult-2 confirmations from members other
	// than the suspect and the suspecter before it shortens it.
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	lo := time.Duration(float64(t.SuspicionMult)*scale*1000) * t.ProbeInterval / 1000
	hi := time.Duration(t.SuspicionMaxTimeoutMult) * lo
	if n-2 < t.SuspicionMult-2 {
		hi = lo
	}
	return Detection{
		ProbeInterval: t.ProbeInterval,
		ProbeTimeout:  t.ProbeTimeout,
		SuspicionMin:  lo,
		SuspicionMax:  hi,
		Expected:      2*t.ProbeInterval + lo,
		Worst:         2*t.ProbeInterval + hi,
	}
}

// deadWithin bounds how long failure detection takes to declare a silent
// member dead in a cluster of up to 10: a death this node confirmed
// (ConfirmDead) stands at least this long before a member still counted
// alive is taken to answer its probes after all.
func (t Timing) deadWithin() time.Duration { return t.Detection(10).Worst }
