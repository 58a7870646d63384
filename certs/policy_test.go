package certs

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestRenewalPolicyDecide(t *testing.T) {
	p := DefaultRenewalPolicy()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	long, short := t0.Add(90*day), t0.Add(6*day)
	cases := []struct {
		name       string
		notAfter   time.Time
		st         RenewalState
		wantAt     time.Time
		wantReason string
		wantNB     time.Time
	}{
		{"90 days, no ARI: a third left", long, RenewalState{}, t0.Add(60 * day), "lifetime", time.Time{}},
		{"6 days, no ARI: a third left", short, RenewalState{}, t0.Add(4 * day), "lifetime", time.Time{}},
		{"ARI window chosen time wins, earlier", long, RenewalState{ARI: &ARIState{Start: t0.Add(10 * day), End: t0.Add(11 * day), Chosen: t0.Add(10*day + time.Hour)}},
			t0.Add(10*day + time.Hour), "ari", time.Time{}},
		{"ARI window chosen time wins, later", long, RenewalState{ARI: &ARIState{Start: t0.Add(70 * day), End: t0.Add(71 * day), Chosen: t0.Add(70 * day)}},
			t0.Add(70 * day), "ari", time.Time{}},
		{"ARI after the emergency point is overridden", long, RenewalState{ARI: &ARIState{Start: t0.Add(85 * day), End: t0.Add(89 * day), Chosen: t0.Add(88 * day)}},
			t0.Add(81 * day), "emergency", time.Time{}},
		{"ARI fetch without window: lifetime", long, RenewalState{ARI: &ARIState{NextCheck: t0.Add(day)}}, t0.Add(60 * day), "lifetime", time.Time{}},
		{"backoff delays the attempt", long, RenewalState{NextAttempt: t0.Add(61 * day), LastAttempt: t0.Add(60 * day)}, t0.Add(60 * day), "lifetime", t0.Add(61 * day)},
		{"emergency caps the backoff", short, RenewalState{ARI: &ARIState{Start: t0.Add(6 * day), End: t0.Add(6 * day), Chosen: t0.Add(6 * day)},
			LastAttempt: t0.Add(5*day + 12*time.Hour), NextAttempt: t0.Add(5*day + 18*time.Hour)},
			short.Add(-time.Duration(float64(6*day) / 10)), "emergency", t0.Add(5*day + 12*time.Hour + 10*time.Minute)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(t0, tc.notAfter, tc.st)
			if !d.At.Equal(tc.wantAt) || d.Reason != tc.wantReason || !d.NotBefore.Equal(tc.wantNB) {
				t.Fatalf("Decide = %v %s nb %v; want %v %s nb %v", d.At, d.Reason, d.NotBefore, tc.wantAt, tc.wantReason, tc.wantNB)
			}
			if d.Due(d.At.Add(-time.Second)) {
				t.Error("due before its time")
			}
			if !tc.wantNB.After(d.At) && !d.Due(d.At) {
				t.Error("not due at its time")
			}
		})
	}
}

func TestRenewalPolicyBackoff(t *testing.T) {
	p := DefaultRenewalPolicy()
	rnd := rand.New(rand.NewPCG(1, 2))
	prev := time.Duration(0)
	for n := 1; n <= 20; n++ {
		base := p.Backoff(n, nil)
		if base < prev || base > p.BackoffMax {
			t.Fatalf("Backoff(%d) = %s after %s (max %s)", n, base, prev, p.BackoffMax)
		}
		j := p.Backoff(n, rnd)
		if j < base || j > base+base/4 {
			t.Fatalf("jittered Backoff(%d) = %s outside [%s, +25%%]", n, j, base)
		}
		prev = base
	}
	if p.Backoff(1, nil) != p.BackoffMin || p.Backoff(20, nil) != p.BackoffMax {
		t.Fatal("backoff does not start at min and end at max")
	}
}

func TestARIRetry(t *testing.T) {
	p := DefaultRenewalPolicy()
	for _, tc := range []struct{ in, want time.Duration }{
		{0, p.ARIRecheck}, {time.Second, p.ARIRetryMin}, {3 * time.Hour, 3 * time.Hour}, {30 * 24 * time.Hour, p.ARIRetryMax},
	} {
		if got := p.ARIRetry(tc.in); got != tc.want {
			t.Errorf("ARIRetry(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestChooseInWindow(t *testing.T) {
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	end := start.Add(48 * time.Hour)
	seen := map[time.Time]bool{}
	for i := range 200 {
		id := fmt.Sprintf("acme-%d", i)
		c := chooseInWindow(id, start, end)
		if c.Before(start) || !c.Before(end) {
			t.Fatalf("%s: %v outside the window", id, c)
		}
		if !chooseInWindow(id, start, end).Equal(c) {
			t.Fatal("the choice is not deterministic")
		}
		seen[c.Truncate(time.Hour)] = true
	}
	if len(seen) < 20 {
		t.Fatalf("choices cluster in %d hours of 48", len(seen))
	}
	if !chooseInWindow("x", start, start).Equal(start) {
		t.Fatal("an empty window must yield its start")
	}
}

func TestOwner(t *testing.T) {
	members := []string{"a", "b", "c", "d"}
	counts := map[string]int{}
	moved := 0
	for i := range 2000 {
		id := fmt.Sprintf("acme-%04d", i)
		o := Owner(id, members)
		if o2 := Owner(id, []string{"d", "c", "b", "a"}); o2 != o {
			t.Fatal("the owner depends on the order of the members")
		}
		counts[o]++
		// Removing a member moves only that member's certificates.
		if o3 := Owner(id, []string{"a", "b", "c"}); o != "d" && o3 != o {
			moved++
		}
	}
	if moved != 0 {
		t.Fatalf("%d certificates moved between remaining members", moved)
	}
	for _, m := range members {
		if counts[m] < 350 {
			t.Fatalf("member %s owns %d of 2000: %v", m, counts[m], counts)
		}
	}
	if Owner("x", nil) != "" {
		t.Fatal("no members, no owner")
	}
}

func TestCertificateIDAndNames(t *testing.T) {
	a := CertificateID([]string{"Example.com", "www.example.com"})
	if a != CertificateID([]string{"www.example.com", "example.com", "example.com"}) {
		t.Fatal("the id depends on order, case or duplicates")
	}
	if a == CertificateID([]string{"example.com"}) {
		t.Fatal("different name sets share an id")
	}
	names, err := NormalizeNames("domains", []string{"WWW.Example.com", "www.example.com", "*.example.com"})
	if err != nil || len(names) != 2 || names[0] != "www.example.com" {
		t.Fatalf("NormalizeNames = %v, %v", names, err)
	}
	for _, bad := range [][]string{nil, {""}, {"a..b"}, {"foo.*.com"}, {"under_score.com"}} {
		if _, err := NormalizeNames("domains", bad); err == nil {
			t.Errorf("NormalizeNames(%q) accepted", bad)
		}
	}
}
