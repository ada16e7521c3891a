"""Audit requirements.lock for known vulnerabilities; exit 1 if any is found.

pip-audit is the auditor: it asks PyPI's JSON API (`/pypi/<name>/<version>/json`) for the
advisories of each pinned version and fails (`--strict`) when one cannot be looked up. Some
package mirrors (this project's CI machines among them) serve only the per-project document
`/pypi/<name>/json`, whose `vulnerabilities` are those of the project's newest release. Then
pip-audit cannot audit anything, and this script falls back to that document for every pin that
is the newest release, and names the pins it could not audit (a stale pin: refresh the lock).

Usage: python .ci/audit.py [requirements.lock]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

PYPI = os.environ.get("AUDIT_PYPI_URL", "https://pypi.org/pypi")  # tests point it elsewhere


def pins(lock: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "==" in line:
            name, _, version = line.partition("==")
            out[name.strip()] = version.split(";", 1)[0].strip()
    return out


def fetch(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            data: dict[str, object] = json.load(response)
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def pip_audit(lock: Path) -> tuple[int, str]:
    command = [
        sys.executable, "-m", "pip_audit", "--strict", "--no-deps", "--disable-pip",
        "--progress-spinner", "off", "-r", str(lock),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def fallback(locked: dict[str, str]) -> int:
    found, stale = [], []
    for name, version in sorted(locked.items()):
        project = fetch(f"{PYPI}/{name}/json")
        info = project.get("info") if project else None
        newest = info.get("version") if isinstance(info, dict) else None
        if newest != version:
            stale.append(f"{name}=={version} (newest {newest})")
            continue
        advisories = project.get("vulnerabilities") if project else None
        for advisory in advisories if isinstance(advisories, list) else []:
            if isinstance(advisory, dict) and not advisory.get("withdrawn"):
                found.append(f"{name}=={version}: {advisory.get('id')} {advisory.get('link')}")
    audited = len(locked) - len(stale)
    print(f"audit (PyPI project data): {audited} of {len(locked)} pins audited")
    for line in stale:
        print(f"  not audited, not the newest release: {line}")
    for line in found:
        print(f"  VULNERABLE: {line}")
    return 1 if found else 0


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
    locked = pins(lock)
    if not locked:
        print(f"{lock}: no pinned requirements", file=sys.stderr)
        return 1
    code, output = pip_audit(lock)
    if code == 0:
        print(output.strip() or "pip-audit: no known vulnerabilities")
        return 0
    if "Dependency not found on PyPI" not in output or "Found " in output:
        print(output, file=sys.stderr)  # a vulnerability, or another failure
        return 1
    name, version = next(iter(locked.items()))
    if fetch(f"{PYPI}/{name}/{version}/json") is not None:
        print(output, file=sys.stderr)  # PyPI answers: a pin really is unknown there
        return 1
    print("pip-audit: PyPI's per-version JSON API is not served here; using project data")
    return fallback(locked)


if __name__ == "__main__":
    sys.exit(main())
