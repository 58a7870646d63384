package agent

import (
	"runtime"
	"testing"
	"time"
)

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

// The collector's target is retuned after every collection, not on a
// timer: a heap that grows between two ticks would otherwise outrun it.
func TestAfterEachGC(t *testing.T) {
	calls := make(chan int, 16)
	n := 0
	afterEachGC(func() bool {
		n++
		calls <- n
		return n < 3
	})
	for want := 1; want <= 3; want++ {
		deadline := time.After(10 * time.Second)
		for got := 0; got < want; {
			runtime.GC()
			select {
			case got = <-calls:
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				t.Fatalf("call %d did not come after collections", want)
			}
		}
	}
	// After f returned false it is not called again.
	runtime.GC()
	runtime.GC()
	select {
	case got := <-calls:
		t.Fatalf("called again (%d) after returning false", got)
	case <-time.After(200 * time.Millisecond):
	}
}
