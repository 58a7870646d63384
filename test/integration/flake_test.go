package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

type flakeLock struct {
	Version int    `json:"version"`
	Root    string `json:"root"`
	Nodes   map[string]struct {
		Inputs map[string]any `json:"inputs"`
		Locked struct {
			Type, Owner, Repo, Rev, NarHash string
			LastModified                    int64 `json:"lastModified"`
		} `json:"locked"`
		Original struct {
			Type, Owner, Repo, Ref string
		} `json:"original"`
	} `json:"nodes"`
}

// TestFlakeIsPinned checks flake.lock against flake.nix without nix: every
// input is locked to a full commit and a NAR hash, from the branch flake.nix
// names. Where nix is installed it also evaluates the dev shell.
func TestFlakeIsPinned(t *testing.T) {
	nixFile, err := os.ReadFile("../../flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../flake.lock")
	if err != nil {
		t.Fatal(err)
	}
	var lock flakeLock
	if err := json.Unmarshal(b, &lock); err != nil {
		t.Fatalf("flake.lock: %v", err)
	}
	if lock.Version != 7 || lock.Root == "" {
		t.Fatalf("flake.lock version %d root %q", lock.Version, lock.Root)
	}
	inputs := regexp.MustCompile(`(?m)^\s*([\w-]+)\.url = "github:(\w+)/([\w.-]+)/([\w.-]+)";`).FindAllStringSubmatch(string(nixFile), -1)
	if len(inputs) == 0 {
		t.Fatal("flake.nix declares no github inputs")
	}
	rootInputs := lock.Nodes[lock.Root].Inputs
	rev := regexp.MustCompile(`^[0-9a-f]{40}$`)
	narHash := regexp.MustCompile(`^sha256-[A-Za-z0-9+/]{43}=$`)
	for _, in := range inputs {
		name, owner, repo, ref := in[1], in[2], in[3], in[4]
		nodeName, ok := rootInputs[name].(string)
		if !ok {
			t.Errorf("input %s is not in flake.lock", name)
			continue
		}
		n := lock.Nodes[nodeName]
		if n.Original.Owner != owner || n.Original.Repo != repo || n.Original.Ref != ref {
			t.Errorf("input %s: flake.nix says %s/%s/%s, the lock %+v", name, owner, repo, ref, n.Original)
		}
		if !rev.MatchString(n.Locked.Rev) || !narHash.MatchString(n.Locked.NarHash) || n.Locked.LastModified == 0 {
			t.Errorf("input %s is not pinned: %+v", name, n.Locked)
		}
	}
	if len(rootInputs) != len(inputs) {
		t.Errorf("flake.lock has %d root inputs, flake.nix %d", len(rootInputs), len(inputs))
	}

	nix, err := exec.LookPath("nix")
	if err != nil {
		t.Skip("nix is not installed here: the lock is checked, the dev shell is not evaluated (run `nix develop` where nix exists)")
	}
	system := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH] + "-" + runtime.GOOS
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nix, "--extra-experimental-features", "nix-command flakes",
		"eval", "--raw", "../..#devShells."+system+".default.name")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nix eval of the dev shell: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "nix-shell") {
		t.Errorf("dev shell name %q", out)
	}
}
