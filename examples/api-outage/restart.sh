#!/bin/sh
# restart_service tool: stops the service and starts it again without the
# fault, detached from this tool's process group, then waits until it answers.
set -eu
name="$1"
here="$(cd "$(dirname "$0")" && pwd)"
state="$here/state"
if [ -f "$state/$name.pid" ]; then
    kill "$(cat "$state/$name.pid")" 2>/dev/null || true
fi
rm -f "$state/$name.port"
echo "restart $name" >> "$state/$name.restarts"
setsid python3 "$here/service.py" "$state" "$name" </dev/null >>"$state/$name.log" 2>&1 &
i=0
while [ ! -f "$state/$name.port" ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "service $name did not come back" >&2; exit 1; }
    sleep 0.05
done
echo "restarted $name on port $(cat "$state/$name.port")"
