"""The README and the documentation site: every code block runs, each in a fresh temporary folder.

A fenced block's language says what it is: ``bash`` and ``python`` are code, ``text``, ``toml`` and
``yaml`` are shown, not run.  The HTML comment on the line before a code block says how it is tested:

- none, or ``<!-- test: run -->``: it runs (bash with ``-euo pipefail``, the venv's ``icmix`` and
  ``python`` first on the PATH, the repository's ``configs/`` copied beside it), and must succeed;
- ``<!-- test: parse (why) -->``: its commands train for minutes to hours, so each ``icmix`` command
  is checked without running it: the argument parser accepts it, and a figure, preset, ``--set`` key,
  config file or zoo run it names exists;
- ``<!-- test: skip (why) -->``: not run here, with the reason (the set-up commands themselves).

The tutorials (``docs/tutorials/*.py``) are executed by ``make docs``, which CI runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*test:\s*(?P<mode>run|parse|skip)\b(?P<why>[^>]*)-->\s*$")
CODE = {"bash", "python"}
SHOWN = {"text", "toml", "yaml"}
DIRECTIVES = {"{toctree}", "{image}", "{eval-rst}", "{argparse}", "{config-schema}"}  # the site's structure


def blocks():
    """``(page, line, lang, mode, why, body)`` of every fenced block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            lang = m["lang"]
            if lang in DIRECTIVES:
                continue
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = MARK.search(before)
            mode, why = (mark["mode"], mark["why"].strip(" ()")) if mark else ("run", "")
            found.append((page.relative_to(ROOT).as_posix(), line, lang, mode, why, m["body"]))
    return found


BLOCKS = blocks()
CODE_BLOCKS = [b for b in BLOCKS if b[2] in CODE]


def test_every_block_says_what_it_is_and_how_it_is_tested():
    """An untagged fence would escape the tests: every block names its language, and every skip its reason."""
    assert len(CODE_BLOCKS) >= 20, f"only {len(CODE_BLOCKS)} code blocks found"
    untagged = [f"{p}:{n}" for p, n, lang, *_ in BLOCKS if lang not in CODE | SHOWN]
    assert not untagged, f"fenced blocks without a language in {sorted(CODE | SHOWN)}: {untagged}"
    unexplained = [f"{p}:{n}" for p, n, _, mode, why, _ in CODE_BLOCKS if mode != "run" and len(why) < 10]
    assert not unexplained, f"parse or skip without a reason: {unexplained}"


def test_every_fence_is_seen():
    """No fence escapes the block reader: each line opening or closing a fence (``` or ~~~, any
    indentation) belongs to a block it found, and no block is a MyST directive it does not know."""
    for page in PAGES:
        text = page.read_text()
        fences = sum(1 for line in text.splitlines() if line.lstrip().startswith(("```", "~~~")))
        found = [m for m in FENCE.finditer(text)]
        assert fences == 2 * len(found), f"{page.relative_to(ROOT)}: {fences} fence lines, {len(found)} blocks read"
        unknown = [m["lang"] for m in found if m["lang"].startswith("{") and m["lang"] not in DIRECTIVES]
        assert not unknown, f"{page.relative_to(ROOT)}: directives the tests do not know: {unknown}"


def test_no_link_leaves_the_repository_except_to_public_pages():
    """Relative links resolve inside the clone; the rest are https pages (no ../shared, no file:)."""
    bad = []
    for page in [*PAGES, *sorted((DOCS / "tutorials").glob("*.py"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("https://") or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if target.startswith(("http:", "file:", "/")) or not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
        if "shared/SPEC" in text or "../shared" in text:
            bad.append(f"{page.relative_to(ROOT)}: names ../shared")
    assert not bad, bad


def test_the_readme_fits_on_a_screen_and_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    first = next(b for b in BLOCKS if b[0] == "README.md")
    assert [line.split()[:2] for line in first[5].splitlines()] == [["make", "demo"], ["make", "test"]]


def _environment(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env.pop("ICMIX_ZOO", None)
    shutil.copytree(ROOT / "configs", tmp / "configs")
    return env


def _ids(found):
    return [f"{p}:{n}" for p, n, *_ in found]


RUN = [b for b in CODE_BLOCKS if b[3] == "run"]


@pytest.mark.parametrize("page, line, lang, mode, why, body", RUN, ids=_ids(RUN))
def test_the_block_runs(page, line, lang, mode, why, body, tmp_path):
    env = _environment(tmp_path)
    if lang == "python":
        script = tmp_path / "block.py"
        script.write_text(body)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", body]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page}:{line} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def _commands(body: str) -> list[list[str]]:
    """The ``icmix`` command lines of a bash block (``icmix …``, ``python -m icmix …`` or ``torchrun … -m
    icmix …``), continuation lines joined, ``$VAR``s of the block's own ``VAR="…"`` assignments expanded,
    comments dropped.  Any other line (but ``pip install``) fails: a parse block runs nothing unchecked."""
    text = body.replace("\\\n", " ")
    variables, commands = {}, []
    for raw in text.splitlines():
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        assignment = re.fullmatch(r"([A-Z_]+)=(.*)", words[0]) if len(words) == 1 else None
        if assignment:
            variables[assignment[1]] = assignment[2]
            continue
        expanded = []
        for word in words:
            name = word[1:] if word.startswith("$") else None
            expanded += shlex.split(variables[name]) if name in variables else [word]
        if expanded[0] == "icmix":
            commands.append(expanded[1:])
        elif "-m" in expanded and expanded[expanded.index("-m") + 1:][:1] == ["icmix"] \
                and expanded[0] in ("python", "python3", "torchrun"):
            commands.append(expanded[expanded.index("-m") + 2:])
        elif expanded[:2] != ["pip", "install"]:
            raise AssertionError(f"a line the parse check cannot check: {raw.strip()!r}")
    return commands


def check_command(argv: list[str]) -> None:
    """Parse an ``icmix`` command line as the CLI does and resolve what it names, without running it."""
    from icmix.cli import _load_plugins, build_parser

    argv = _load_plugins(list(argv))
    args = build_parser().parse_args(argv)
    if getattr(args, "slurm", None):
        from icmix.train.launch import slurm_parameters

        slurm_parameters(args.slurm)  # ValueError on an unknown key or a bad value
    if getattr(args, "tracking", None):
        from icmix.overrides import typed
        from icmix.train.tracking import check_tracking

        check_tracking(typed("--tracking", args.tracking, tuple[str, ...]))
    if args.command == "reproduce":
        from icmix.report import configs_for

        configs_for(args.preset, args.set, args.seeds, None if args.figure == "all" else [args.figure])
    elif args.command in ("train", "sweep") and getattr(args, "config", None):
        from icmix.train import TrainConfig

        TrainConfig.from_yaml(ROOT / args.config, args.set)
    elif args.command == "zoo" and args.zoo_command == "verify":
        from icmix import zoo

        zoo.lookup(args.run)  # ValueError where no shipped run has that name (or a unique prefix of it)


PARSE = [b for b in CODE_BLOCKS if b[3] == "parse"]


@pytest.mark.parametrize("page, line, lang, mode, why, body", PARSE, ids=_ids(PARSE))
def test_the_block_parses(page, line, lang, mode, why, body):
    assert lang == "bash", f"{page}:{line}: only bash blocks are checked by parsing"
    commands = _commands(body)
    assert commands, f"{page}:{line}: no icmix command to check"
    for argv in commands:
        try:
            check_command(argv)
        except SystemExit as exit_:  # argparse refused it
            pytest.fail(f"{page}:{line}: icmix {shlex.join(argv)}: the parser refused it ({exit_.code})")
        except Exception as err:  # noqa: BLE001 - any refusal names the command
            pytest.fail(f"{page}:{line}: icmix {shlex.join(argv)}: {type(err).__name__}: {err}")


def _readme_claims():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_claims", ROOT / "tools" / "readme_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_claims_check_catches_a_changed_number_verdict_or_count():
    """``tools/readme_claims.py``, which ``make demo`` runs on its own claims.csv: the README's table
    as measured passes; a number 5 % off, another verdict, another tier or a construction's error above
    1e-10 each fail, as do swapped numbers and a basis the README omits; a rounding change inside 2 %
    (or below 1e-10) does not."""
    tool = _readme_claims()
    readme = (ROOT / "README.md").read_text()
    rows, _ = tool.readme_rows(readme)
    assert len(rows) >= 15
    basis = {"–": "–", "-": "–"}
    claims = [{"measured": r["measured"], "verdict": r["verdict"],
               "basis": basis.get(r["basis"], r["basis"].replace(",", " tier,", 1) if "," in r["basis"] else r["basis"] + " tier")}
              for r in rows]
    assert tool.mismatches(readme, claims) == []

    def changed(i, **fields):
        return [dict(c, **fields) if j == i else c for j, c in enumerate(claims)]

    ratio = next(i for i, r in enumerate(rows) if r["measured"].startswith("1.04 ± 0.029"))
    assert tool.mismatches(readme, changed(ratio, measured="1.0404 ± 0.0291 (4 seeds)")) == []
    assert any("'1.04 ± 0.029' in the README" in m for m in tool.mismatches(readme, changed(ratio, measured="1.092 ± 0.029")))
    assert tool.mismatches(readme, changed(ratio, measured="0.029 ± 1.04"))  # the same numbers, swapped
    none = next(i for i, r in enumerate(rows) if r["basis"] in ("–", "-"))
    assert tool.mismatches(readme, changed(none, basis="cpu tier"))  # a basis the README leaves out
    verdict = claims[ratio]["verdict"]
    other = "doesn't" if verdict == "holds" else "holds"
    found = tool.mismatches(readme, changed(ratio, verdict=other))
    assert any("verdict" in m for m in found) and any("count of verdicts" in m for m in found)
    assert any("basis" in m for m in tool.mismatches(readme, changed(ratio, basis="cpu tier, 4 seeds")))
    tiny = next(i for i, r in enumerate(rows) if r["measured"] == "2.8e-16")
    assert tool.mismatches(readme, changed(tiny, measured="3.1e-16 (worst of 4 checks)")) == []
    assert tool.mismatches(readme, changed(tiny, measured="2e-09 (worst of 4 checks)"))
    assert tool.mismatches(readme, claims[:-1])  # a claim more or less
