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
	wall.set(time.UnixMilli(2_000_000))
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
	// Remote beyond the offset: reported and counted, and followed only
	// up to the bound (wall + max offset).
	got, err = c.Update(NewHLC(1_010_000, 0))
	var skew *ClockSkewError
	if !errors.As(err, &skew) || skew.Ahead != 10*time.Second || got != NewHLC(1_000_500, 1) || c.Skew() != 1 {
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

// A peer's version far ahead is stored but does not drag the clock: the
// clock stays within the bound, the origin is counted, and a later local
// write to the same row still wins (the causal-overwrite rule). A restart
// never issues an HLC at or below one the store issued before.
func TestClockBoundedAndCausalOverwrite(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	future := NewHLC(time.Now().Add(24*time.Hour).UnixMilli(), 0)
	res, err := applySet(s, ChangeSet{Origin: "peer", Seq: 1, HLC: future, Changes: []Change{poolChange(t, "p", "x", Version{HLC: future, Origin: "peer", Seq: 1})}})
	if err != nil || res.Applied != 1 || res.FarAhead != 1 {
		t.Fatalf("apply from the future: %+v, %v", res, err)
	}
	if s.Info().ClockSkewEvents == 0 || s.ClockSkew()["peer"] != 1 {
		t.Fatalf("skew not counted: %v", s.ClockSkew())
	}
	bound := NewHLC(time.Now().Add(cfg.MaxClockOffset+time.Second).UnixMilli(), 0)
	if s.Clock().Last() > bound {
		t.Fatalf("clock %s dragged past the bound %s", s.Clock().Last(), bound)
	}
	p, err := s.GetPool(t.Context(), "p")
	if err != nil || p.Algorithm != "x" {
		t.Fatalf("far-ahead row not stored: %+v %v", p, err)
	}
	// A later local write to the same row wins over the future version.
	c := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("p")) })
	if c.Version.HLC <= future {
		t.Fatalf("local HLC %s not after the row's %s", c.Version.HLC, future)
	}
	if p, _ := s.GetPool(t.Context(), "p"); p.Algorithm == "x" {
		t.Fatal("the local write lost to the far-ahead version")
	}
	// A write to another row is versioned by the bounded clock.
	q := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("q")) })
	if q.Version.HLC > bound {
		t.Fatalf("unrelated write %s carries the far-ahead time", q.Version.HLC)
	}
	s.Close()
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Clock().Last() < q.Version.HLC {
		t.Fatalf("high-water mark %s below used %s", s.Clock().Last(), q.Version.HLC)
	}
	r := mustUpdate(t, s, func(tx *Tx) error { return tx.PutPool(samplePool("r")) })
	if r.Version.HLC <= q.Version.HLC {
		t.Fatalf("after restart %s <= %s", r.Version.HLC, q.Version.HLC)
	}
}
