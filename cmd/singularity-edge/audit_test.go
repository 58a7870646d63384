package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/singularity-ng/singularity-edge/apitypes"
)

func TestAuditList(t *testing.T) {
	realAgent(t)
	mustRun(t, "pools", "create", "web", "--host", "a.example.test")
	// A refused change (a second pool claiming the host) records nothing.
	if _, _, code := runCLI(t, "", "pools", "create", "api", "--host", "a.example.test"); code == 0 {
		t.Fatal("host takeover accepted")
	}
	mustRun(t, "pools", "update", "web", "--algorithm", "random")

	out := mustRun(t, "audit", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("audit list: want a header and 2 rows, got:\n%s", out)
	}
	if !strings.Contains(lines[1], "update") || !strings.Contains(lines[1], `algorithm: "round_robin" -> "random"`) || !strings.Contains(lines[2], "create") {
		t.Fatalf("audit list rows, newest first:\n%s", out)
	}

	var page apitypes.List[apitypes.AuditEntry]
	if err := json.Unmarshal([]byte(mustRun(t, "audit", "list", "--output", "json", "--limit", "1")), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 1 || page.Items[0].Action != "update" || page.Items[0].Object != "web" || page.Next == "" {
		t.Fatalf("audit list --output json --limit 1: %+v", page)
	}
}
