package discovery

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/singularity-ng/singularity-edge/test/fakefly"
)

func TestDNSSource(t *testing.T) {
	srv, err := fakefly.StartDNS("edge", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Enough machines that the vms TXT answer spans several strings.
	srv.Set(
		fakefly.Machine{ID: "148e21ea7e3289", Region: "iad", Addr: netip.MustParseAddr("fdaa:0:1:a7b:1::2")},
		fakefly.Machine{ID: "3d8d9016b27e89", Region: "syd", Addr: netip.MustParseAddr("fdaa:0:1:a7b:2::3")},
		fakefly.Machine{ID: "e784079b449483", Region: "lhr", Addr: netip.MustParseAddr("127.0.0.4")},
	)
	src, err := NewDNSSource("edge", srv.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.Candidates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"[fdaa:0:1:a7b:1::2]:7946": "148e21ea7e3289 iad",
		"[fdaa:0:1:a7b:2::3]:7946": "3d8d9016b27e89 syd",
		"127.0.0.4:7946":           "e784079b449483 lhr", // IPv4-mapped AAAA dialed as IPv4
	}
	if len(got) != len(want) {
		t.Fatalf("candidates = %+v", got)
	}
	for _, c := range got {
		if w := want[c.JoinAddr(7946)]; w != c.MachineID+" "+c.Region {
			t.Errorf("%s: machine %q region %q, want %q", c.JoinAddr(7946), c.MachineID, c.Region, w)
		}
	}
	if n := srv.Queries(dns.TypeANY); n != 0 {
		t.Errorf("%d ANY queries", n)
	}
	if srv.Queries(dns.TypeTXT) == 0 || srv.Queries(dns.TypeAAAA) == 0 {
		t.Errorf("expected TXT and AAAA questions")
	}

	srv.Remove("3d8d9016b27e89")
	got, _ = src.Candidates(context.Background())
	if len(got) != 2 {
		t.Fatalf("after removal: %+v", got)
	}

	srv.SetDown(true)
	if _, err := src.Candidates(context.Background()); err == nil {
		t.Fatal("an outage must be an error, not an empty cluster")
	}
}

func TestParseVMsTXT(t *testing.T) {
	got := parseVMsTXT("a iad,b syd, c ,")
	want := []machineEntry{{"a", "iad"}, {"b", "syd"}, {"c", ""}}
	if len(got) != len(want) {
		t.Fatalf("%+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%d: %+v want %+v", i, got[i], want[i])
		}
	}
}

func TestFlapsSource(t *testing.T) {
	dnsSrv, err := fakefly.StartDNS("edge", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dnsSrv.Close()
	dnsSrv.Set(fakefly.Machine{ID: "m1", Region: "iad", Addr: netip.MustParseAddr("fdaa::2")})
	api := &fakefly.MachinesAPI{App: "edge", DNS: dnsSrv, Token: "secret-token",
		Stopped: []fakefly.Machine{{ID: "m2", Region: "syd", Addr: netip.MustParseAddr("fdaa::3")}}}
	hs := httptest.NewServer(api)
	defer hs.Close()

	src, err := NewFlapsSource(context.Background(), "edge", "secret-token", hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.Candidates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].MachineID != "m1" || got[0].Region != "iad" || got[0].JoinAddr(7946) != "[fdaa::2]:7946" {
		t.Fatalf("candidates = %+v (stopped machines must be left out)", got)
	}
	if api.Requests() != 1 {
		t.Fatalf("fixture saw %d requests", api.Requests())
	}
	if _, err := NewFlapsSource(context.Background(), "edge", "", hs.URL); err == nil {
		t.Fatal("no token must be refused")
	}
}

func TestStaticSource(t *testing.T) {
	s, err := NewStaticSource([]string{"10.0.0.2", "[fdaa::3]:8000", "::ffff:127.0.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Candidates(context.Background())
	var addrs []string
	for _, c := range got {
		addrs = append(addrs, c.JoinAddr(7946))
	}
	want := []string{"10.0.0.2:7946", "[fdaa::3]:8000", "127.0.0.9:7946"}
	for i := range want {
		if addrs[i] != want[i] {
			t.Fatalf("seeds = %v, want %v", addrs, want)
		}
	}
	if _, err := NewStaticSource([]string{"peer.example.com:7946"}); err == nil {
		t.Fatal("host names must be refused")
	}
}

func TestPeersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster", "peers.json")
	if p, err := loadPeers(path); err != nil || p != nil {
		t.Fatalf("missing file: %v %v", p, err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	in := []knownPeer{
		{Name: "b", Addr: "127.0.0.3:7946", Region: "syd", LastSeen: now},
		{Name: "a", Addr: "[fdaa::2]:7946", MachineID: "m", LastSeen: now.Add(-100 * time.Hour)},
	}
	if err := savePeers(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := loadPeers(path)
	if err != nil || len(out) != 2 {
		t.Fatalf("%v %v", out, err)
	}
	c := peersAsCandidates(out, now, 72*time.Hour)
	if len(c) != 1 || c[0].JoinAddr(1) != "127.0.0.3:7946" {
		t.Fatalf("recent peers = %+v", c)
	}
}
