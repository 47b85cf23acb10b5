"""Find credentials written into the repository: every file git tracks or would track (ignored files
such as `.env` excepted) is read as text and searched for

* private key blocks (`-----BEGIN ... PRIVATE KEY-----`);
* well-known token shapes: AWS access key ids, GitHub and Slack tokens, Slack webhook URLs, JWTs;
* URLs with a password in them (`scheme://user:password@host`), unless the password is a
  `${VARIABLE}` or an obvious placeholder;
* a high-entropy literal assigned to a name that says it is secret (`password`, `secret`,
  `token`, `key`, `credential`, …): `name = "value"`, `name: value`, `NAME=value`.

    python tests/tools/secret_scan.py     # prints each finding (file:line: what), exit 1 if any

`tests/unit/test_secret_scan.py` runs it over the repository and over planted secrets.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PATTERNS = {
    "private key block": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Slack webhook URL": re.compile(r"hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]{16,}"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?P<password>[^\s/@'\"]+)@")
# A name that says its value is a secret, then `=` or `:`, then the value (quoted or bare).
ASSIGNMENT = re.compile(
    r"(?i)(?P<name>[\w.-]*?(?:passw(?:or)?d|passphrase|secret|token|credential|apikey|(?<![a-z0-9])key)[\w.-]*)"
    r"[\"']?\s*(?::|=|:=|=>)\s*(?P<quote>[\"']?)(?P<value>[^\s\"',;#)}\]]+)(?P=quote)"
)
PLACEHOLDER = re.compile(r"^(?:\$|<|%|\{|\*|\.\.\.|x+$|changeme|password|secret|example)", re.I)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def looks_random(value: str) -> bool:
    """A literal that looks generated: long enough, letters and digits (or both cases) mixed, high
    entropy; not a placeholder, a variable reference or a dotted/called expression."""
    if len(value) < 16 or PLACEHOLDER.match(value) or "(" in value:
        return False
    if re.search(r"[A-Za-z]", value) and re.search(r"\d", value):
        return entropy(value) >= 3.5
    # No digit: a generated key can still lack one (1 in 1,700 Fernet keys does). Long, in base64's
    # alphabet, with both cases in about equal shares (a camelCase or CONSTANT name has far fewer
    # of one).
    if len(value) < 32 or not re.fullmatch(r"[A-Za-z+/_=-]+", value):
        return False
    upper, lower = sum(c.isupper() for c in value), sum(c.islower() for c in value)
    return min(upper, lower) >= len(value) / 4 and entropy(value) >= 4.0


def scan_text(text: str, path: str = "<text>") -> list[Finding]:
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in PATTERNS.items():
            if pattern.search(line):
                findings.append(Finding(path, number, what))
        for m in URL_PASSWORD.finditer(line):
            if not PLACEHOLDER.match(m["password"]):
                findings.append(Finding(path, number, "URL with a password"))
        for m in ASSIGNMENT.finditer(line):
            if looks_random(m["value"]):
                findings.append(Finding(path, number, f"a secret-looking literal assigned to {m['name']}"))
    return findings


def repository_files(root: Path = ROOT) -> list[Path]:
    """Files git tracks, and untracked ones it does not ignore (what the next commit could add)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [root / name for name in sorted(set(out.decode().split("\0"))) if name and (root / name).is_file()]


def scan_repository(root: Path = ROOT) -> list[Finding]:
    findings = []
    for path in repository_files(root):
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        findings += scan_text(data.decode("utf-8", errors="replace"), path.relative_to(root).as_posix())
    return findings


def main() -> int:
    findings = scan_repository()
    for finding in findings:
        print(finding)
    print(f"{len(findings)} possible secret(s) in {len(repository_files())} files", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
