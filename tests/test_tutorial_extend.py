"""The extension tutorial (``docs/tutorials/extend.py``) runs as written, from an empty folder: a
module of the user's own (``chain_example.py``: a task family with its Bayes predictor, a figure
with only a ``quick`` preset and the claim it measures) loads with ``icmix --plugin`` without being
installed, trains its run, draws its figure and puts its claim in ``claims.csv`` and the report;
then a predictor is added to the MTD family.  (``make docs`` executes the whole tutorial too; this
test checks the numbers its text quotes.)"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "extend.py"


def cells() -> list[str]:
    """The tutorial's code cells (jupytext percent format), in order."""
    parts = re.split(r"^(# %%.*)$", TUTORIAL.read_text(), flags=re.M)[1:]  # marker, body, marker, body, …
    return [body for marker, body in zip(parts[::2], parts[1::2]) if "[markdown]" not in marker]


def _assigned(name: str):
    """The literal the tutorial assigns to ``name`` at its top level."""
    tree = ast.parse(TUTORIAL.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise LookupError(name)


def chain_example() -> str:
    """The source of ``chain_example.py`` as the tutorial writes it (its family, then its figure)."""
    return _assigned("FAMILY") + _assigned("FIGURE")


def kl_rows(out: str) -> dict[str, list[float]]:
    """``{label: [KL per length]}`` from the printed pivot tables."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s+((?:\d+\.\d+\s*)+)$", line)
        if m and not line.startswith("length"):
            rows[m.group(1).strip()] = [float(v) for v in m.group(2).split()]
    return rows


def test_the_extension_tutorial_runs_as_written(tmp_path):
    (tmp_path / "chain_example.py").write_text(chain_example())
    # The command as written, through the installed `icmix` script (not `python -m`, which would
    # put the folder on the path by itself): --plugin finds the module in the current folder.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    command = ["icmix", *_assigned("command")]
    assert command[:5] == ["icmix", "--plugin", "chain_example", "reproduce", "chain"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "chain"
    for name in ("chain.csv", "chain.png", "claims.csv", "report.md", "report.html"):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "chain.csv")
    kl = table[table.length == 24].groupby("estimator")["kl_mean"].mean()
    bayes, gpt, uniform = kl["Bayes (Dirichlet counts)"], kl["trained GPT"], kl["uniform"]
    # The numbers the tutorial quotes: KL about 0.13 (Bayes), 0.26 (GPT), 0.31 (uniform), fraction about 0.7.
    assert abs(bayes - 0.13) < 0.03 and abs(uniform - 0.31) < 0.03 and abs(gpt - 0.26) < 0.05
    assert bayes < gpt < uniform
    claims = pd.read_csv(out / "claims.csv", keep_default_na=False)
    row = claims.set_index("claim").loc["A small GPT learns Markov chains in context, between uniform and Bayes"]
    per_seed = table[table.length == 24].pivot_table(index="seed", columns="estimator", values="kl_mean")
    fraction = ((per_seed["trained GPT"] - per_seed["Bayes (Dirichlet counts)"])
                / (per_seed["uniform"] - per_seed["Bayes (Dirichlet counts)"]))
    assert len(fraction) == 3 and row.measured.startswith(f"{fraction.mean():.3g} ± ") and abs(fraction.mean() - 0.7) < 0.2
    assert row.verdict == "holds" and fraction.max() < 1
    assert row.converged in ("yes", "no")  # judged against the family's Bayes predictor, not "unknown"
    report = (out / "report.md").read_text()
    assert "A small GPT learns Markov chains in context" in report and "## chain" in report
    # The predictor added to the MTD family sits in the family's line-up, k-step EM too.
    script = tmp_path / "mtd_predictor.py"
    script.write_text(cells()[-1])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = kl_rows(done.stdout)
    assert {"first lag only", "EM 1-step (from λ=1/m)", "Bayes (exact)"} <= set(rows)
    assert rows["Bayes (exact)"][-1] < rows["first lag only"][-1]
