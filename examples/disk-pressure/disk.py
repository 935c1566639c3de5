"""The example's volume: a directory `volumes/NAME` whose quota (MiB) is in
`volumes/NAME.quota`. `usage NAME` prints its use; `prune NAME KEEP`
deletes its oldest *.log files, keeping the newest KEEP, and prints what it
freed; `fill NAME FILES MIB QUOTA` makes it (the injected fault)."""

import json
import os
import sys

MIB = 1024 * 1024


def logs(volume):
    """The volume's log files, oldest first."""
    paths = [os.path.join(volume, n) for n in os.listdir(volume) if n.endswith(".log")]
    return sorted(paths, key=lambda p: (os.path.getmtime(p), p))


def used(volume):
    return sum(os.path.getsize(os.path.join(volume, n)) for n in os.listdir(volume))


def usage(name):
    volume = os.path.join("volumes", name)
    with open(volume + ".quota") as f:
        quota = int(f.read())
    mib = used(volume) / MIB
    print(json.dumps({"used_mib": round(mib, 1), "quota_mib": quota, "percent": round(100 * mib / quota)}))


def prune(name, keep):
    volume = os.path.join("volumes", name)
    old = logs(volume)[: max(0, len(logs(volume)) - int(keep))]
    freed = sum(os.path.getsize(p) for p in old)
    for p in old:
        os.remove(p)
    print(json.dumps({"deleted": len(old), "freed_mib": round(freed / MIB, 1)}))


def fill(name, files, mib, quota):
    volume = os.path.join("volumes", name)
    os.makedirs(volume, exist_ok=True)
    with open(volume + ".quota", "w") as f:
        f.write(quota)
    for i in range(int(files)):
        path = os.path.join(volume, f"app-{i:03}.log")
        with open(path, "wb") as f:
            f.write(b"x" * int(float(mib) * MIB))
        # Oldest first: app-000 is the oldest.
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))


if __name__ == "__main__":
    {"usage": usage, "prune": prune, "fill": fill}[sys.argv[1]](*sys.argv[2:])
