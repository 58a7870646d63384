package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The runbooks in docs/runbooks/ are sequences of commands. The steps that run
// on a Machine (not the ones that talk to Fly itself) are run here, in the
// runbooks' order, against real agent processes. Each test names its runbook.

// localCLI runs a CLI command on a stopped agent's data directory.
func localCLI(t *testing.T, encKey string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "EDGE_ENCRYPTION_KEY="+encKey)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("running %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), 0
}

func mustCLI(t *testing.T, a *agentProc, token string, args ...string) string {
	t.Helper()
	out, errOut, code := a.cli(token, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

func mustLocal(t *testing.T, encKey string, args ...string) string {
	t.Helper()
	out, errOut, code := localCLI(t, encKey, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

func poolNames(t *testing.T, a *agentProc, token string) []string {
	t.Helper()
	var page struct {
		Items []struct {
			Name string `json:"name"`
		} `json:"items"`
	}
	if code := a.api(token, "GET", "/api/pools", nil, &page); code != http.StatusOK {
		t.Fatalf("GET /api/pools: %d", code)
	}
	var names []string
	for _, p := range page.Items {
		names = append(names, p.Name)
	}
	return names
}

func nodeID(t *testing.T, encKey, dataDir string) string {
	t.Helper()
	out := mustLocal(t, encKey, "db", "info", "--data-dir", dataDir, "-o", "json")
	var info struct {
		NodeID string `json:"node_id"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.NodeID == "" {
		t.Fatalf("db info: %v\n%s", err, out)
	}
	return info.NodeID
}

// docs/runbooks/rotating-secrets.md, "Admin token": a restart with a new
// EDGE_ADMIN_TOKEN; the old token stops working, the data stays.
func TestRunbookRotateAdminToken(t *testing.T) {
	dataDir := t.TempDir()
	oldToken, newToken, encKey := newToken(t), newToken(t), newToken(t)+newToken(t)
	a := startAgent(t, agentOptions{dataDir: dataDir, token: oldToken, encKey: encKey})
	mustCLI(t, a, oldToken, "pools", "create", "web", "--host", "example.test")
	a.stop()

	b := startAgent(t, agentOptions{dataDir: dataDir, token: newToken, encKey: encKey})
	if _, errOut, code := b.cli(oldToken, "pools", "list"); code != 6 || !strings.Contains(errOut, "token") {
		t.Errorf("the old token after rotation: exit %d %s, want 6", code, errOut)
	}
	if out := mustCLI(t, b, newToken, "pools", "list"); !strings.Contains(out, "web") {
		t.Errorf("the data did not survive the restart:\n%s", out)
	}
}

// docs/runbooks/backup-and-restore.md: online backup, writes after it, stop,
// restore over the volume with --force, start; the restored node holds the
// backup's rows and not the later ones.
func TestRunbookBackupAndRestore(t *testing.T) {
	dataDir, backups := t.TempDir(), filepath.Join(t.TempDir(), "backups")
	token, encKey := newToken(t), newToken(t)+newToken(t)
	a := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: encKey})
	mustCLI(t, a, token, "pools", "create", "web", "--host", "example.test")
	mustCLI(t, a, token, "backends", "add", "web", "http://127.0.0.1:9")

	// Step 1: online backup through the admin API (incremental).
	if out := mustCLI(t, a, token, "db", "backup", backups); !strings.Contains(out, "Backup 1") {
		t.Errorf("backup output:\n%s", out)
	}
	mustCLI(t, a, token, "pools", "create", "after-backup", "--host", "later.test")
	// Step 2: a checkpoint on the same disk, the instant variant.
	mustCLI(t, a, token, "db", "checkpoint", filepath.Join(t.TempDir(), "snap"))
	a.stop()
	before := nodeID(t, encKey, dataDir)

	// Step 3: restore refuses a non-empty data directory without --force,
	// then replaces it.
	if _, errOut, code := localCLI(t, encKey, "db", "restore", backups, "--data-dir", dataDir); code != 5 {
		t.Errorf("restore over a live volume without --force: exit %d %s, want 5", code, errOut)
	}
	mustLocal(t, encKey, "db", "restore", backups, "--data-dir", dataDir, "--force")

	b := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: encKey})
	names := strings.Join(poolNames(t, b, token), ",")
	if names != "web" {
		t.Errorf("pools after restore = %q, want only the backed-up one", names)
	}
	if out := mustCLI(t, b, token, "backends", "list", "web"); !strings.Contains(out, "127.0.0.1") {
		t.Errorf("backend lost in restore:\n%s", out)
	}
	b.stop()
	// A restored store must not come back as the node it was copied from:
	// peers would take its old seqs for ones they hold already.
	if after := nodeID(t, encKey, dataDir); after == before {
		t.Errorf("restored node kept node id %s; a restore must take a new identity", after)
	}
}

// docs/runbooks/rocksdb-corruption.md: a damaged table is emptied with
// remove-table on the stopped agent; the other tables stay.
func TestRunbookRemoveDamagedTable(t *testing.T) {
	dataDir := t.TempDir()
	token, encKey := newToken(t), newToken(t)+newToken(t)
	a := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: encKey})
	mustCLI(t, a, token, "pools", "create", "web", "--host", "example.test")
	mustCLI(t, a, token, "backends", "add", "web", "http://127.0.0.1:9")

	// The running agent holds the store: remove-table must refuse.
	if _, errOut, code := localCLI(t, encKey, "db", "remove-table", "backends", "--yes", "--data-dir", dataDir); code == 0 {
		t.Errorf("remove-table on a running agent's store succeeded: %s", errOut)
	}
	a.stop()
	if _, _, code := localCLI(t, encKey, "db", "remove-table", "backends", "--data-dir", dataDir); code != 2 {
		t.Errorf("remove-table without --yes: exit %d, want 2", code)
	}
	out := mustLocal(t, encKey, "db", "remove-table", "backends", "--yes", "--data-dir", dataDir)
	if !strings.Contains(out, "resynced from peers") {
		t.Errorf("remove-table output:\n%s", out)
	}

	b := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: encKey})
	if names := strings.Join(poolNames(t, b, token), ","); names != "web" {
		t.Errorf("pools after remove-table backends = %q", names)
	}
	if out := mustCLI(t, b, token, "backends", "list", "web"); strings.Contains(out, "127.0.0.1") {
		t.Errorf("backends survived remove-table:\n%s", out)
	}
}

// docs/runbooks/high-disk-use.md: where the bytes are, compaction, and the
// agent's refusal to start on a directory it cannot write.
func TestRunbookDiskChecks(t *testing.T) {
	dataDir := t.TempDir()
	token, encKey := newToken(t), newToken(t)+newToken(t)
	a := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: encKey})
	mustCLI(t, a, token, "pools", "create", "web", "--host", "example.test")
	for i := 0; i < 20; i++ {
		mustCLI(t, a, token, "backends", "add", "web", fmt.Sprintf("http://127.0.0.1:%d", 10000+i))
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dataDir, &fs); err != nil || fs.Blocks == 0 {
		t.Fatalf("statfs of the data dir: %v", err)
	}
	out := mustCLI(t, a, token, "db", "tables")
	for _, want := range []string{"backends", "LIVE DATA", "SST FILES", "Block cache"} {
		if !strings.Contains(out, want) {
			t.Errorf("db tables lacks %q:\n%s", want, out)
		}
	}
	mustCLI(t, a, token, "db", "compact", "backends")
	if out := mustCLI(t, a, token, "db", "stats", "backends"); out == "" {
		t.Error("db stats printed nothing")
	}
	if _, err := exec.LookPath("du"); err == nil {
		if out, err := exec.Command("du", "-sh", dataDir).Output(); err != nil || len(out) == 0 {
			t.Errorf("du -sh %s: %v", dataDir, err)
		}
	}
}

// docs/runbooks/region-down.md: a Machine that comes back on a new private
// address says so in its log, and its health listener tells the platform
// when it is ready.
func TestRunbookMovedMachineLogsNewAddress(t *testing.T) {
	dataDir := t.TempDir()
	token, encKey := newToken(t), newToken(t)+newToken(t)
	start := func(privateIP string) *agentProc {
		a := &agentProc{
			t: t, dataDir: dataDir, http: freeAddr(t), https: freeAddr(t), admin: freeAddr(t),
			env: append(os.Environ(), "EDGE_ADMIN_TOKEN="+token, "EDGE_ENCRYPTION_KEY="+encKey, "FLY_PRIVATE_IP="+privateIP),
		}
		health := freeAddr(t)
		// A cluster of one: this test is about the address, not gossip
		// (which FLY_PRIVATE_IP would otherwise turn on).
		a.start("--health-addr", health, "--gossip-addr=")
		t.Cleanup(a.stop)
		resp, err := http.Get("http://" + health + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("health of a started agent: %d", resp.StatusCode)
		}
		return a
	}
	a := start("fdaa:0:1:a7b:1::2")
	a.stop()
	if !strings.Contains(a.log.String(), "first start") {
		t.Errorf("first start not logged:\n%s", a.log.String())
	}
	b := start("fdaa:0:1:a7b:9::7")
	b.stop()
	log := b.log.String()
	if !strings.Contains(log, "private address changed") || !strings.Contains(log, `"previous_private_ip":"fdaa:0:1:a7b:1::2"`) {
		t.Errorf("the address change is not logged with the old address:\n%s", log)
	}
}

// docs/runbooks/rotating-secrets.md, "Encryption key": with the agent
// stopped, db rekey seals the stored private keys with the new key; the old
// key no longer opens the store, the new one does and TLS still works.
func TestRunbookRotateEncryptionKey(t *testing.T) {
	dataDir := t.TempDir()
	token, oldKey, newKey := newToken(t), newToken(t)+newToken(t), newToken(t)+newToken(t)
	a := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: oldKey})
	certPEM, keyPEM, pool := selfSignedCert(t, "rotate.test")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, a, token, "certs", "upload", "--cert", certFile, "--key", keyFile)
	b := startBackend(t, "after-rekey", nil)
	mustCLI(t, a, token, "pools", "create", "secure", "--ssl-mode", "flexible", "--ssl-domain", "rotate.test")
	mustCLI(t, a, token, "backends", "add", "secure", b.url())

	// Rekey needs the agent stopped: a running store is refused.
	rekey := func() (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary, "db", "rekey", "--data-dir", dataDir)
		cmd.Env = append(os.Environ(), "EDGE_ENCRYPTION_KEY="+oldKey, "EDGE_NEW_ENCRYPTION_KEY="+newKey)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stdout.String(), stderr.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), 0
	}
	if _, errOut, code := rekey(); code != 7 {
		t.Errorf("rekey on a running agent's store: exit %d %s, want 7", code, errOut)
	}
	a.stop()
	out, errOut, code := rekey()
	if code != 0 || !strings.Contains(out, "Sealed 1 private keys") {
		t.Fatalf("db rekey: exit %d\n%s%s", code, out, errOut)
	}

	// The old key is refused at start, naming the variable.
	bad := exec.Command(binary, "agent", "--data-dir", dataDir, "--http-addr", freeAddr(t), "--https-addr", freeAddr(t), "--admin-addr", freeAddr(t))
	bad.Env = append(os.Environ(), "EDGE_ADMIN_TOKEN="+token, "EDGE_ENCRYPTION_KEY="+oldKey)
	if msg, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(msg), "EDGE_ENCRYPTION_KEY") {
		t.Fatalf("start with the old key after rekey: %v\n%s", err, msg)
	}

	// The new key opens it, and the re-sealed private key terminates TLS.
	c := startAgent(t, agentOptions{dataDir: dataDir, token: token, encKey: newKey})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "rotate.test"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, c.https)
		},
	}}
	waitFor(t, 10*time.Second, "HTTPS with the re-sealed key", func() bool {
		resp, err := client.Get("https://rotate.test/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
