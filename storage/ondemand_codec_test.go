package storage

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// The on-demand TLS settings (pool fields 24-27) survive encoding under
// their own numbers, and a record without them (an older agent's)
// decodes with on-demand TLS off.
func TestPoolOnDemandFieldsRoundTrip(t *testing.T) {
	p := goldenPool()
	p.OnDemandTLS = true
	p.OnDemandAllow = []string{"*.shops.example.com", "x.example.net"}
	p.OnDemandAsk = "https://ask.example.com/check"
	p.OnDemandRate = 7
	b := encodePool(&p)
	got, err := decodePool(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.OnDemandTLS || !slices.Equal(got.OnDemandAllow, p.OnDemandAllow) || got.OnDemandAsk != p.OnDemandAsk || got.OnDemandRate != 7 {
		t.Fatalf("round trip lost on-demand settings: %+v", got)
	}
	seen := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatal(protowire.ParseError(n))
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatal(protowire.ParseError(m))
		}
		b = b[m:]
		seen[num]++
	}
	if seen[24] != 1 || seen[25] != 2 || seen[26] != 1 || seen[27] != 1 {
		t.Fatalf("field numbers %v, want 24 once, 25 twice, 26 and 27 once", seen)
	}
	old := goldenPool()
	got, err = decodePool(encodePool(&old))
	if err != nil || got.OnDemandTLS || got.OnDemandAllow != nil || got.OnDemandAsk != "" || got.OnDemandRate != 0 {
		t.Fatalf("older record: %+v, %v", got, err)
	}
}
