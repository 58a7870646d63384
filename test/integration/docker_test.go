package integration

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/singularity-ng/singularity-edge/test/itest"
)

// There is no container engine on the test machines, so the image is checked
// piece by piece: the Dockerfile is parsed, the binary is built with its
// flags, and what it links is mapped to Debian packages on this (bookworm)
// machine, the same distribution the image uses.

type dockerStage struct {
	name, from string
	runs       []string // RUN instructions, continuation lines joined
	env        []string
}

func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []dockerStage
	var logical []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	for _, l := range logical {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			f := strings.Fields(rest)
			st := dockerStage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
		case "RUN":
			stages[len(stages)-1].runs = append(stages[len(stages)-1].runs, rest)
		case "ENV":
			stages[len(stages)-1].env = append(stages[len(stages)-1].env, strings.Fields(rest)...)
		}
	}
	return stages
}

var aptInstall = regexp.MustCompile(`apt-get install ((?:-\S+ )*)([^&;]+)`)

func (s dockerStage) aptPackages() []string {
	var pkgs []string
	for _, r := range s.runs {
		for _, m := range aptInstall.FindAllStringSubmatch(r, -1) {
			pkgs = append(pkgs, strings.Fields(m[2])...)
		}
	}
	return pkgs
}

func makefileBuildFlags(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^GO_BUILD_FLAGS := (.+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Makefile has no GO_BUILD_FLAGS")
	}
	return string(m[1])
}

func TestDockerfileMatchesMakefileAndLinkedLibraries(t *testing.T) {
	for _, tool := range []string{"ldd", "dpkg", "dpkg-query", "apt-cache"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: this check needs a Debian machine", tool)
		}
	}
	stages := parseDockerfile(t, "../../Dockerfile")
	if len(stages) != 2 {
		t.Fatalf("%d stages, want build and runtime", len(stages))
	}
	build, runtime := stages[0], stages[len(stages)-1]
	if !strings.HasSuffix(build.from, "-bookworm") || runtime.from != "debian:bookworm-slim" {
		t.Errorf("stages from %s and %s, want a bookworm Go image and debian:bookworm-slim", build.from, runtime.from)
	}
	if !slices.Contains(build.aptPackages(), "librocksdb-dev") {
		t.Errorf("the build stage does not install librocksdb-dev: %v", build.aptPackages())
	}
	if !slices.Contains(build.env, "CGO_ENABLED=1") {
		t.Error("the build stage does not set CGO_ENABLED=1")
	}

	// Same go build flags as `make build`.
	var goBuild string
	for _, r := range build.runs {
		if i := strings.Index(r, "go build "); i >= 0 {
			goBuild = r[i+len("go build "):]
		}
	}
	flags, _, ok := strings.Cut(goBuild, " -o ")
	if !ok {
		t.Fatalf("no `go build ... -o` in the build stage: %q", goBuild)
	}
	flags = strings.Join(strings.Fields(strings.NewReplacer("${VERSION}", "$(VERSION)", "${COMMIT}", "$(COMMIT)").Replace(flags)), " ")
	want := makefileBuildFlags(t)
	if flags != want {
		t.Errorf("Dockerfile builds with\n  %s\nthe Makefile with\n  %s", flags, want)
	}
	if !strings.Contains(want, "-trimpath") {
		t.Errorf("GO_BUILD_FLAGS %q lacks -trimpath", want)
	}

	// Build with those flags, list what the binary links, map it to packages.
	bin := filepath.Join(t.TempDir(), "singularity-edge")
	args := []string{"build", "-trimpath", "-ldflags", "-X github.com/singularity-ng/singularity-edge/agent.Version=test",
		"-o", bin, "github.com/singularity-ng/singularity-edge/cmd/singularity-edge"}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd: %v", err)
	}
	linked := map[string]string{} // package -> one library it provides
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>":
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue // linux-vdso
		}
		pkg := owningPackage(t, lib)
		linked[pkg] = lib
	}
	if _, ok := linked["librocksdb7.8"]; !ok {
		t.Fatalf("the binary does not link bookworm's librocksdb7.8: %v", linked)
	}

	explicit := runtime.aptPackages()
	allowed := map[string]bool{}
	for _, p := range explicit {
		allowed[p] = true
	}
	depOut, err := exec.Command("apt-cache", append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests",
		"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}, explicit...)...).Output()
	if err != nil {
		t.Fatalf("apt-cache depends: %v", err)
	}
	for _, line := range strings.Split(string(depOut), "\n") {
		line = strings.TrimSpace(line)
		for _, prefix := range []string{"Depends: ", "PreDepends: "} {
			if p, ok := strings.CutPrefix(line, prefix); ok {
				allowed[strings.Trim(p, "<>")] = true
			}
		}
	}
	for pkg, lib := range linked {
		if !allowed[pkg] {
			t.Errorf("the binary links %s from %s, which the runtime stage does not install", lib, pkg)
		}
	}
	for _, p := range explicit {
		if strings.HasPrefix(p, "lib") {
			if _, ok := linked[p]; !ok {
				t.Errorf("the runtime stage installs %s, which the binary does not link", p)
			}
		}
	}
	if !slices.Contains(explicit, "ca-certificates") {
		t.Error("the runtime stage has no CA certificates: ACME and full_strict backends would fail")
	}
	// setpriv drops root in the entrypoint; it must be in the slim base image.
	if pkg := owningPackage(t, "/usr/bin/setpriv"); pkg != "util-linux" {
		t.Errorf("setpriv comes from %s", pkg)
	} else if ess, _ := exec.Command("dpkg-query", "-W", "-f", "${Essential}", pkg).Output(); string(ess) != "yes" {
		t.Errorf("%s is not Essential, so not in debian:bookworm-slim", pkg)
	}
}

// owningPackage maps a file to the Debian package that installed it,
// following symlinks (the loader's path is often a link).
func owningPackage(t *testing.T, path string) string {
	t.Helper()
	for _, p := range []string{path, resolve(path)} {
		out, err := exec.Command("dpkg", "-S", p).Output()
		if err != nil {
			continue
		}
		pkg, _, _ := strings.Cut(strings.SplitN(string(out), "\n", 2)[0], ":")
		return pkg
	}
	t.Fatalf("no package owns %s", path)
	return ""
}

func resolve(p string) string {
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		return p
	}
	return r
}

// TestEntrypointHandsTheVolumeToTheEdgeUser runs docker/entrypoint.sh as root
// the way the image does: a root-owned data directory becomes the
// unprivileged user's, the command runs as that user, and a MAINTENANCE file
// keeps the agent from starting.
func TestEntrypointHandsTheVolumeToTheEdgeUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the entrypoint drops root; run as root (CI does)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	entrypoint, err := filepath.Abs("../../docker/entrypoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	const uid = "65534" // nobody: an unprivileged id that exists everywhere
	root := worldTraversableDir(t)
	data := filepath.Join(root, "data")
	if err := os.MkdirAll(filepath.Join(data, "lost+found"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "leftover"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "EDGE_DATA_DIR="+data, "EDGE_UID="+uid, "EDGE_GID="+uid)

	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, entrypoint, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("sh", "-c", `echo "uid=$(id -u) gid=$(id -g)"; touch "$EDGE_DATA_DIR/written"`)
	if err != nil {
		t.Fatalf("entrypoint: %v\n%s", err, out)
	}
	if !strings.Contains(out, "uid="+uid+" gid="+uid) {
		t.Errorf("the command did not run as %s: %s", uid, out)
	}
	for _, p := range []string{data, filepath.Join(data, "leftover"), filepath.Join(data, "lost+found"), filepath.Join(data, "written")} {
		if owner := fileOwner(t, p); owner != uid+":"+uid {
			t.Errorf("%s owned by %s, want %s:%s", p, owner, uid, uid)
		}
	}

	// The real agent through the entrypoint: it runs as the unprivileged
	// user in the entrypoint's own process (exec, exec), so Fly's
	// kill_signal reaches it and it drains and exits cleanly.
	health := freeAddr(t)
	agentCmd := exec.Command(entrypoint, binary, "agent", "--http-addr", freeAddr(t), "--https-addr", "",
		"--admin-addr", freeAddr(t), "--health-addr", health)
	agentCmd.Env = env
	var agentLog itest.SyncBuffer
	agentCmd.Stdout, agentCmd.Stderr = &agentLog, &agentLog
	if err := agentCmd.Start(); err != nil {
		t.Fatal(err)
	}
	agentExited := make(chan error, 1)
	go func() { agentExited <- agentCmd.Wait() }()
	waitFor(t, 30*time.Second, "the agent's health listener", func() bool {
		resp, err := http.Get("http://" + health + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	status, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(agentCmd.Process.Pid), "status"))
	if !regexp.MustCompile(`(?m)^Uid:\s+` + uid + `\s`).Match(status) {
		t.Errorf("the agent does not run as uid %s in the entrypoint's process:\n%s", uid, status)
	}
	_ = agentCmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-agentExited:
		if err != nil {
			t.Errorf("agent exit after SIGTERM: %v\n%s", err, agentLog.String())
		}
	case <-time.After(30 * time.Second):
		_ = agentCmd.Process.Kill()
		t.Fatalf("the agent ignored SIGTERM through the entrypoint\n%s", agentLog.String())
	}
	if !strings.Contains(agentLog.String(), "agent stopped") {
		t.Errorf("no clean stop in the log:\n%s", agentLog.String())
	}

	// Maintenance: the command is replaced by an idle sleep.
	if err := os.WriteFile(filepath.Join(data, "MAINTENANCE"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(entrypoint, "sh", "-c", "echo agent-started")
	cmd.Env = env
	var buf itest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitFor(t, 10*time.Second, "the maintenance message", func() bool { return strings.Contains(buf.String(), "MAINTENANCE exists") })
	// The message comes before the exec chain (setpriv, then sleep) is done.
	waitFor(t, 10*time.Second, "the entrypoint's process to become sleep", func() bool {
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "comm"))
		return strings.TrimSpace(string(comm)) == "sleep"
	})
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Error("the maintenance sleep ignored SIGINT")
	}
	if strings.Contains(buf.String(), "agent-started") {
		t.Error("the command ran despite MAINTENANCE")
	}
}

// TestAgentRefusesUnwritableDataDir starts the agent as an unprivileged user
// on a root-owned data directory, as on a fresh Fly volume without the
// entrypoint: it must stop at once with a sentence that names the fix.
func TestAgentRefusesUnwritableDataDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a directory another user cannot write")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	data := filepath.Join(worldTraversableDir(t), "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		binary, "agent", "--data-dir", data, "--http-addr", freeAddr(t), "--https-addr", "", "--admin-addr", freeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the agent started on a directory it cannot write:\n%s", out)
	}
	for _, want := range []string{data, "is not writable", "chown -R 65534:65534"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the error does not say %q:\n%s", want, out)
		}
	}
}

// worldTraversableDir is a temporary directory that other users can enter
// (t.TempDir's parents are root-only).
func worldTraversableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "edge-ownership-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func fileOwner(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%u:%g", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
