package storage

import (
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeWall struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeWall) now() time.Time  { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeWall) set(t time.Time) { f.mu.Lock(); f.t = t; f.mu.Unlock() }

func TestHLCLayout(t *testing.T) {
	h := NewHLC(1737117045123, 7)
	if h.Millis() != 1737117045123 || h.Logical() != 7 {
		t.Fatalf("%d %d", h.Millis(), h.Logical())
	}
	if h.Time() != time.UnixMilli(1737117045123).UTC() || h.String() != "2025-01-17T12:30:45.123Z/7" {
		t.Fatalf("%v %s", h.Time(), h)
	}
}

func TestClockMonotonic(t *testing.T) {
	wall := &fakeWall{t: time.UnixMilli(1_000_000)}
	c := NewClock(wall.now, 500*time.Millisecond)
	a := c.Now()
	if a != NewHLC(1_000_000, 0) {
		t.Fatalf("first = %s", a)
	}
	b := c.Now() // same millisecond: logical counter
	if b != NewHLC(1_000_000, 1) {
		t.Fatalf("second = %s", b)
	}
	wall.set(time.UnixMilli(999_000)) // wall clock steps back
	if d := c.Now(); d <= b {
		t.Fatalf("went back: %s after %s", d, b)
	}
	wall.set(time.UnixMilli(1_000_500))
	if e := c.Now(); e != NewHLC(1_000_500, 0) {
		t.Fatalf("did not follow the wall clock: %s", e)
	}
	// Logical overflow moves into the next millisecond.
	c.Witness(NewHLC(2_000_000, 0xffff))
	if f := c.Now(); f != NewHLC(2_000_001, 0) {
		t.Fatalf("overflow: %s", f)
	}
}

func TestClockUpdate(t *testing.T) {
	wall := &fakeWall{t: time.UnixMilli(1_000_000)}
	c := NewClock(wall.now, 500*time.Millisecond)
	// Remote within the offset: adopted, no error.
	got, err := c.Update(NewHLC(1_000_300, 4))
	if err != nil || got != NewHLC(1_000_300, 5) {
		t.Fatalf("within offset: %s %v", got, err)
	}
	// Remote beyond the offset: still adopted, reported and counted.
	got, err = c.Update(NewHLC(1_010_000, 0))
	var skew *ClockSkewError
	if !errors.As(err, &skew) || skew.Ahead != 10*time.Second || got != NewHLC(1_010_000, 1) || c.Skew() != 1 {
		t.Fatalf("beyond offset: %s %v skew=%d", got, err, c.Skew())
	}
	if n := c.Now(); n <= got {
		t.Fatalf("Now %s not after %s", n, got)
	}
	// Remote behind: local clock keeps going.
	before := c.Last()
	got, err = c.Update(NewHLC(1, 0))
	if err != nil || got <= before {
		t.Fatalf("old remote: %s %v", got, err)
	}
}

func TestClockConcurrentUnique(t *testing.T) {
	c := NewClock(nil, time.Second)
	const n = 8
	results := make([][]HLC, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				results[i] = append(results[i], c.Now())
			}
		}()
	}
	wg.Wait()
	seen := make(map[HLC]bool)
	for _, r := range results {
		for j, h := range r {
			if seen[h] || (j > 0 && h <= r[j-1]) {
				t.Fatalf("duplicate or non-increasing %s", h)
			}
			seen[h] = true
		}
	}
}

// A restart never issues an HLC at or below one already stored, even when
// the wall clock is behind (here: a peer's version far in the future).
func TestClockHighWaterMarkSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	future := NewHLC(time.Now().Add(time.Hour).UnixMilli(), 0)
	ctx := t.Context()
	if _, err := s.Apply(ctx, ChangeSet{Origin: "peer", Seq: 1, HLC: future, Changes: []Change{poolChange(t, "p", "x", Version{HLC: future, Origin: "peer", Seq: 1})}}); err != nil {
		t.Fatal(err)
	}
	if s.Info().ClockSkewEvents == 0 {
		t.Fatal("skew not counted")
	}
	c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("q")) })
	if c.Version.HLC <= future {
		t.Fatalf("local HLC %s not after witnessed %s", c.Version.HLC, future)
	}
	s.Close()
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Clock().Last() < c.Version.HLC {
		t.Fatalf("high-water mark %s below used %s", s.Clock().Last(), c.Version.HLC)
	}
	c2 := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("r")) })
	if c2.Version.HLC <= c.Version.HLC {
		t.Fatalf("after restart %s <= %s", c2.Version.HLC, c.Version.HLC)
	}
}
