package agent

import "testing"

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{0, 256 * mib, 100},         // nothing measured yet
		{100 * mib, 256 * mib, 100}, // small heap: the runtime's pacing
		{256 * mib, 256 * mib, 100}, // at the headroom
		{800 * mib, 256 * mib, 32},  // a million backends: ~256 MiB of headroom
		{4096 * mib, 256 * mib, 10}, // never below 10
		{800 * mib, 0, 100},         // off
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("gcPercentFor(%d MiB, %d MiB) = %d, want %d", c.live/mib, c.headroom/mib, got, c.want)
		}
	}
}
