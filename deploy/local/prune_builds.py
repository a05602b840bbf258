"""Removes stale build outputs of this workspace from a cargo target dir.

Every rebuild of a test or bench binary leaves its predecessor behind in
`<target>/<profile>/deps` (about 200 MB each); over weeks of development on
one machine they filled the disk (76 GB here). This keeps the newest
executable of each of the workspace's test and bench targets and removes
the older ones. Libraries and check metadata are left alone (clippy's and
the test build's differ, and both are reused). Usage: prune_builds.py
TARGET_DIR
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def own_names():
    """Names of this workspace's test and bench binaries."""
    names = set()
    for d in ("tests/tests", "benches/benches"):
        for f in os.listdir(os.path.join(ROOT, d)):
            if f.endswith(".rs"):
                names.add(f[:-3])
    return names


def prune(deps, names):
    built = defaultdict(lambda: defaultdict(list))
    for f in os.listdir(deps):
        m = re.match(r"^(.*)-([0-9a-f]{16})$", f)
        if m and (m.group(1) in names or m.group(1) == "marktwin"):
            built[m.group(1)][m.group(2)].append(os.path.join(deps, f))
    freed = 0
    for versions in built.values():
        if len(versions) < 2:
            continue
        newest = max(versions, key=lambda h: max(os.path.getmtime(p) for p in versions[h]))
        for h, paths in versions.items():
            if h != newest:
                for p in paths:
                    freed += os.path.getsize(p)
                    os.remove(p)
    return freed


def main():
    target = sys.argv[1]
    names = own_names()
    freed = 0
    for profile in ("debug", "release"):
        deps = os.path.join(target, profile, "deps")
        if os.path.isdir(deps):
            freed += prune(deps, names)
    if freed:
        print(f"removed {freed / 1e9:.1f} GB of stale builds from {target}")


main()
