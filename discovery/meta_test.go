package discovery

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	m := Meta{ClusterID: "c1", NodeID: "n1", MachineID: "148e21ea7e3289", Region: "syd",
		ReplicationAddr: "[fdaa::2]:7947", AdminAddr: "[fdaa::2]:4000", AgentVersion: "1.2.3", Ready: true,
		CookieKeyFP: "\x01\x02fingerprint\xff"}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Fatalf("round trip: %+v, want %+v", got, m)
	}
	// A newer agent appends fields: this one still reads what it knows.
	m.Health = "disk_full"
	if b, err = m.Encode(); err != nil {
		t.Fatal(err)
	}
	got, err = DecodeMeta(append(append([]byte(nil), b...), 3, 'n', 'e', 'w'))
	if err != nil || got != m {
		t.Fatalf("with a trailing field: %+v, %v", got, err)
	}
	// An older agent's metadata ends before the cookie key fingerprint:
	// it parses, with no fingerprint (not a mismatch).
	old := m
	old.CookieKeyFP = ""
	ob, _ := old.Encode()
	got, err = DecodeMeta(ob[:len(ob)-1])
	if err != nil || got != old {
		t.Fatalf("an older agent's metadata: %+v, %v", got, err)
	}
}

// An agent older than Meta.Health sends seven fields and no health: it
// still parses, with Health empty (and an older agent skips the health of
// a newer one, as any trailing field: TestMetaRoundTrip).
func TestMetaFromAnOlderAgent(t *testing.T) {
	old := []byte{metaFormat, metaFlagReady}
	for _, f := range []string{"c1", "n1", "m1", "syd", "[fdaa::2]:7947", "[fdaa::2]:4000", "1.0.0"} {
		old = append(old, byte(len(f)))
		old = append(old, f...)
	}
	got, err := DecodeMeta(old)
	if err != nil {
		t.Fatalf("an older agent's metadata: %v", err)
	}
	want := Meta{ClusterID: "c1", NodeID: "n1", MachineID: "m1", Region: "syd", ReplicationAddr: "[fdaa::2]:7947",
		AdminAddr: "[fdaa::2]:4000", AgentVersion: "1.0.0", Ready: true}
	if got != want {
		t.Fatalf("older agent's metadata: %+v, want %+v", got, want)
	}
	// What this agent sends with a health, read as an older agent reads
	// it: the first seven fields, the rest skipped.
	b, err := (Meta{ClusterID: "c1", NodeID: "n1", Health: "ok"}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte{metaFormat, 0, 2, 'c', '1', 2, 'n', '1', 0, 0, 0, 0, 0}) {
		t.Fatalf("the first seven fields moved: %v", b)
	}
}

func TestMetaRejects(t *testing.T) {
	good, _ := Meta{ClusterID: "c", NodeID: "n", Health: "ok", CookieKeyFP: "0123456789abcdef"}.Encode()
	// Every field empty after the node id: one length byte each, the last
	// three the agent version (required), the health and the fingerprint.
	bare, _ := Meta{ClusterID: "c", NodeID: "n"}.Encode()
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"format only", []byte{1}},
		{"other format", append([]byte{2}, good[1:]...)},
		{"truncated", good[:len(good)-1]},
		{"required field missing", bare[:len(bare)-3]},
		{"length past end", []byte{1, 0, 200}},
		{"oversize", append(append([]byte(nil), good...), make([]byte, maxMetaSize)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeMeta(tc.b); !errors.Is(err, ErrMeta) {
				t.Fatalf("err = %v, want ErrMeta", err)
			}
		})
	}
	if _, err := (Meta{ClusterID: strings.Repeat("x", maxMetaSize)}).Encode(); !errors.Is(err, ErrMeta) {
		t.Fatalf("oversize encode: %v", err)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	good, _ := Meta{ClusterID: "c", NodeID: "n", Region: "iad", Ready: true}.Encode()
	f.Add(good)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded meta does not encode: %v", err)
		}
		if m2, err := DecodeMeta(again); err != nil || m2 != m {
			t.Fatalf("re-decode: %+v %v", m2, err)
		}
	})
}

func TestParseKeys(t *testing.T) {
	k16 := base64.StdEncoding.EncodeToString(make([]byte, 16))
	k32a := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("a", 32)))
	k32b := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("b", 32)))
	tests := []struct {
		name           string
		primary, extra string
		wantExtra      int
		wantErr        string
	}{
		{"primary only", k32a, "", 0, ""},
		{"aes128", k16, "", 0, ""},
		{"with extra", k32a, k32b + ", " + k16, 2, ""},
		{"primary repeated in extra", k32a, k32a, 0, ""},
		{"missing", "", k32b, 0, "EDGE_GOSSIP_KEY is not set"},
		{"bad length", base64.StdEncoding.EncodeToString(make([]byte, 20)), "", 0, "20 bytes"},
		{"not base64", "zz!", "", 0, "base64"},
		{"bad extra", k32a, k32b + ",nope!", 0, "EDGE_GOSSIP_KEYS key 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKeys(tc.primary, tc.extra)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(k.Extra) != tc.wantExtra {
				t.Fatalf("extra keys = %d, want %d", len(k.Extra), tc.wantExtra)
			}
			if _, err := k.Keyring(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
