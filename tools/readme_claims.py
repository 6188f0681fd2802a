"""Check the README's claims table against the claims a `make demo` wrote (its last step).

    python tools/readme_claims.py README.md results/demo-zoo/claims.csv

The README quotes the demo's claims table (the section "What `make demo` shows"), row for row in
report order.  Each README row must have the demo's verdict and tier, and every number it quotes
must be one of the numbers the demo measured for that claim, within 2 % (a number below 1e-10,
a construction's error, only has to stay below 1e-10: its last digits are the CPU's rounding).  The
sentence "N hold, N don't, N are inconclusive" must count the demo's verdicts.  Prints every
mismatch and exits 1 if there is one: the README then says something the code no longer measures.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

RTOL = 0.02
TINY = 1e-10
NUMBER = re.compile(r"[−-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:e[−-]?\d+)?|[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?")


def numbers(text: str) -> list[float]:
    """The numbers of a cell, with its thousands separators, minus signs and exponents."""
    return [float(n.replace("−", "-").replace(",", "")) for n in NUMBER.findall(text)]


def readme_rows(readme: str) -> tuple[list[dict], str]:
    """The claims table's rows (claim, measured, verdict, basis) and the section's text."""
    section = readme.split("## What `make demo` shows", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("claim (paper)",) and not set(cells[0]) <= set("-: "):
            rows.append(dict(zip(("claim", "measured", "verdict", "basis"), cells)))
    return rows, section


def same(quoted: float, measured: float) -> bool:
    """``quoted`` is the ``measured`` number, within the tolerance."""
    if abs(quoted) < TINY:
        return abs(measured) < TINY
    return abs(measured - quoted) <= RTOL * abs(quoted)


def labels(text: str) -> str:
    """The cell without its labels and what the README leaves out: ``T = N:`` labels, seed counts, check
    counts and notes in parentheses."""
    return re.sub(r"\((?:\d+ seeds?|worst of [^)]*|\d+ windows)\)|; closest to k = \d+|nats/char|of \d+ k|T ?= ?\d+:", "", text)


def mismatches(readme: str, claims: list[dict]) -> list[str]:
    """Every way the README's table differs from the demo's claims."""
    rows, section = readme_rows(readme)
    found = []
    if len(rows) != len(claims):
        found.append(f"the README's table has {len(rows)} rows, the demo measured {len(claims)} claims")
    for i, (row, claim) in enumerate(zip(rows, claims), 1):
        where = f"row {i} ({row['claim'][:50]})"
        if row["verdict"] != claim["verdict"]:
            found.append(f"{where}: verdict {row['verdict']!r} in the README, {claim['verdict']!r} measured")
        quoted, measured = numbers(labels(row["measured"])), numbers(labels(claim["measured"]))
        if len(quoted) > len(measured) or not all(same(q, m) for q, m in zip(quoted, measured)):
            found.append(f"{where}: {row['measured']!r} in the README, {claim['measured']!r} measured "
                         f"(the numbers, in order, within {RTOL:.0%})")
        tier = row["basis"].split(",")[0].strip()
        if tier in ("–", "-") and claim["basis"] not in ("–", "-"):
            found.append(f"{where}: basis {row['basis']!r} in the README, {claim['basis']!r} measured")
        if tier not in ("–", "-") and not claim["basis"].startswith(tier):
            found.append(f"{where}: basis {row['basis']!r} in the README, {claim['basis']!r} measured")
        if numbers(row["basis"]) != numbers(claim["basis"]):
            found.append(f"{where}: basis {row['basis']!r} in the README, {claim['basis']!r} measured")
    counts = re.search(r"(\d+) hold, (\d+) don't, (\d+) are inconclusive", section)
    want = [sum(c["verdict"] == v for c in claims) for v in ("holds", "doesn't", "inconclusive")]
    if counts is None or [int(c) for c in counts.groups()] != want:
        found.append(f"the README's count of verdicts should read: {want[0]} hold, {want[1]} don't, "
                     f"{want[2]} are inconclusive")
    return found


def main(argv: list[str]) -> int:
    """Compare, print the mismatches, and say how to fix them."""
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    readme = Path(argv[0]).read_text(encoding="utf-8")
    with open(argv[1], newline="", encoding="utf-8") as f:
        claims = list(csv.DictReader(f))
    found = mismatches(readme, claims)
    for line in found:
        print(f"README: {line}", file=sys.stderr)
    if found:
        print(f"README: {len(found)} difference(s) from {argv[1]}: update the README's claims table", file=sys.stderr)
        return 1
    print(f"README: its claims table matches {argv[1]} ({len(claims)} claims)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
