package agent

import (
	"errors"
	"fmt"
	"github.com/singularity-ng/singularity-edge/internal/atomicfile"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// Defaults on Fly.io. fly.toml mounts the volume at FlyDataDir and points its
// HTTP check at FlyHealthPort; a test reads fly.toml and holds both sides to
// the same values.
const (
	FlyDataDir    = "/data"
	FlyAdminPort  = 4000
	FlyHealthPort = 4001
)

// privateAddressFile remembers, in the data directory, the 6PN address of the
// last start. It lives beside the store, not in it: it describes this volume's
// Machine, must not replicate, and must survive `db restore`.
const privateAddressFile = "last-private-ip"

// FlyEnvironment is what the Fly.io runtime sets in every Machine.
type FlyEnvironment struct {
	AppName   string // FLY_APP_NAME: <app>.internal names the app's Machines
	Region    string // FLY_REGION
	MachineID string // FLY_MACHINE_ID: stable across restarts and deploys
	PrivateIP string // FLY_PRIVATE_IP: the 6PN address; it can change when a Machine moves host
}

func flyEnvironment(getenv func(string) string) FlyEnvironment {
	return FlyEnvironment{
		AppName:   strings.TrimSpace(getenv("FLY_APP_NAME")),
		Region:    strings.TrimSpace(getenv("FLY_REGION")),
		MachineID: strings.TrimSpace(getenv("FLY_MACHINE_ID")),
		PrivateIP: strings.TrimSpace(getenv("FLY_PRIVATE_IP")),
	}
}

// OnFly reports whether the process runs in a Fly Machine. FLY_APP_NAME
// alone decides: it is set in every Machine and rarely by anything else.
func (f FlyEnvironment) OnFly() bool { return f.AppName != "" }

// checkDataDir makes sure the data directory exists and that this process can
// create, sync and remove a file in it, before RocksDB tries and fails with a
// less helpful message. The usual cause on Fly is a volume that is still
// owned by root while the agent runs as an unprivileged user.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return dataDirError(dir, "cannot be created", err)
	}
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return dataDirError(dir, "is not writable", err)
	}
	name := f.Name()
	_, werr := f.Write([]byte("ok\n"))
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	rerr := os.Remove(name)
	if err := errors.Join(werr, cerr, rerr); err != nil {
		return dataDirError(dir, "is not writable", err)
	}
	return nil
}

func dataDirError(dir, what string, err error) error {
	var fix string
	switch {
	case errors.Is(err, syscall.ENOSPC):
		fix = "the volume is full: extend it (`fly volumes extend VOLUME_ID --size N`) or free space (docs/runbooks/high-disk-use.md)"
	case errors.Is(err, syscall.EROFS):
		fix = "the file system is read-only: on Fly, check that the volume is mounted there ([mounts] in fly.toml) and not in a failed state (`fly volumes list`)"
	case errors.Is(err, os.ErrPermission):
		fix = fmt.Sprintf("it must be owned by the agent's user (uid %d): the image's entrypoint fixes this when the container starts as root; otherwise run `chown -R %d:%d %s`, or point --data-dir (EDGE_DATA_DIR) at a directory you own",
			os.Geteuid(), os.Geteuid(), os.Getegid(), dir)
	default:
		fix = "point --data-dir (EDGE_DATA_DIR) at a writable directory on a persistent volume"
	}
	return fmt.Errorf("data directory %s %s: %w; %s", dir, what, err, fix)
}

// notePrivateAddress compares this start's private address with the one
// remembered in the data directory, logs a change, and remembers the new
// one. A Machine that moved host (or a volume restored into a new Machine)
// comes back on a new 6PN address with the same data: peers that knew the old
// address must learn the new one, so it is worth a line in the log.
func notePrivateAddress(dir, current string, logger *zap.Logger) error {
	if net.ParseIP(current) == nil {
		return fmt.Errorf("FLY_PRIVATE_IP %q is not an IP address", current)
	}
	path := filepath.Join(dir, privateAddressFile)
	prev, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		logger.Info("first start with this data directory on this private address", zap.String("private_ip", current))
	case err != nil:
		return fmt.Errorf("reading %s: %w", path, err)
	case strings.TrimSpace(string(prev)) != current:
		logger.Warn("private address changed since the last start: peers that knew the old address must rejoin this node by name",
			zap.String("previous_private_ip", strings.TrimSpace(string(prev))), zap.String("private_ip", current))
	default:
		return nil
	}
	return atomicfile.WriteFile(path, []byte(current+"\n"))
}
