#!/bin/sh
# Entrypoint of the Singularity Edge image.
#
# Fly mounts a new volume owned by root. Started as root, this script makes
# the data directory belong to the edge user (EDGE_UID:EDGE_GID), then drops
# to that user with setpriv and execs the command, so the agent is the
# process that receives Fly's kill_signal and drains. Started as any other
# user (docker run --user), it changes nothing and execs the command.
#
# Maintenance: a file named MAINTENANCE in the data directory keeps the agent
# from starting; the Machine idles so that `fly ssh console` can run
# `singularity-edge db ...` against the stopped store
# (docs/runbooks/backup-and-restore.md). Remove the file and restart.
set -eu

data_dir="${EDGE_DATA_DIR:-/data}"
uid="${EDGE_UID:-10001}"
gid="${EDGE_GID:-10001}"

if [ "$#" -eq 0 ]; then
  set -- singularity-edge agent
fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$data_dir"
  # chown only when something is not ours yet (a fresh volume, files left by
  # `fly ssh console` as root): otherwise this is a stat and one walk of the
  # names in the volume, which stops at the first stranger.
  if [ "$(stat -c %u:%g "$data_dir")" != "$uid:$gid" ] ||
     [ -n "$(find "$data_dir" \( \! -user "$uid" -o \! -group "$gid" \) -print -quit)" ]; then
    echo "entrypoint: giving $data_dir to uid $uid gid $gid" >&2
    chown -R "$uid:$gid" "$data_dir"
  fi
  chmod 0700 "$data_dir"
  drop="setpriv --reuid=$uid --regid=$gid --clear-groups --no-new-privs --"
else
  drop=""
fi

if [ -e "$data_dir/MAINTENANCE" ]; then
  echo "entrypoint: $data_dir/MAINTENANCE exists: not starting the agent; remove the file and restart the Machine to leave maintenance" >&2
  # exec, so that the stop signal reaches sleep and the Machine stops at once.
  exec $drop sleep infinity
fi

exec $drop "$@"
