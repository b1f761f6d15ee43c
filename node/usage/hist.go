package usage

import (
	"math"
	"math/bits"
	"time"

	"github.com/rbee/rbee/wsapi"
)

// Queue waits are counted in wsapi.UsageWaitBins log-scale bins: bin 0 holds
// waits under 1 ms, bin k (1..19) waits in [2^(k-1), 2^k) ms, and bin 20
// everything from 2^19 ms (about 9 min) up, which wsapi.MaxWait (10 min)
// stays within. A percentile read from them is the bin's geometric middle, so
// it is within a factor of √2 (±41%) of the true value: enough to tell a
// queue that holds requests for seconds from one that does not, in 21 numbers
// a bucket.
const waitBins = wsapi.UsageWaitBins

// waitBin is the bin of a wait of d.
func waitBin(d time.Duration) int {
	ms := d.Milliseconds()
	if ms < 1 {
		return 0
	}
	// ms in [2^(k-1), 2^k) has bit length k.
	return min(bits.Len64(uint64(ms)), waitBins-1)
}

// binMiddleMS is what a wait in bin k is taken to be, in milliseconds.
func binMiddleMS(k int) float64 {
	if k == 0 {
		return 0.5
	}
	return math.Exp2(float64(k-1)) * math.Sqrt2
}

// percentileMS estimates the q-quantile (0 < q <= 1) of the waits counted in
// hist, in milliseconds; 0 when hist is empty.
func percentileMS(hist *[waitBins]int64, q float64) float64 {
	var n int64
	for _, c := range hist {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen int64
	for k, c := range hist {
		seen += c
		if seen >= rank {
			return binMiddleMS(k)
		}
	}
	return binMiddleMS(waitBins - 1)
}
