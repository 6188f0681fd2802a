"""The README's "Extending icmix" section runs as written, from an empty folder: a module of the
user's own (``chain_example.py``: a task family with its Bayes predictor, a figure with only a
``quick`` preset and the claim it measures) loads with ``icmix --plugin`` without being
installed, trains its run, draws its figure and puts its claim in ``claims.csv`` and the
report; then a predictor is added to the MTD family."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    part = text[text.index("## Extending icmix"):]
    return part[: part.index("\n## ", 1)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


def kl_rows(out: str) -> dict[str, list[float]]:
    """``{label: [KL per length]}`` from the printed pivot tables."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s+((?:\d+\.\d+\s*)+)$", line)
        if m and not line.startswith("length"):
            rows[m.group(1).strip()] = [float(v) for v in m.group(2).split()]
    return rows


def test_readme_extending_runs_as_written(tmp_path):
    python, bash = blocks("python"), blocks("bash")
    assert len(python) == 3 and len(bash) == 1, "the family, the figure and claim, a new MTD predictor; one command"
    (tmp_path / "chain_example.py").write_text(python[0] + "\n" + python[1])
    # The command as written, through the installed `icmix` script (not `python -m`, which would
    # put the folder on the path by itself): --plugin finds the module in the current folder.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    command = bash[0].strip()
    assert command.startswith("icmix --plugin chain_example reproduce chain")
    done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "chain"
    for name in ("chain.csv", "chain.png", "claims.csv", "report.md", "report.html"):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "chain.csv")
    kl = table[table.length == 24].groupby("estimator")["kl_mean"].mean()
    bayes, gpt, uniform = kl["Bayes (Dirichlet counts)"], kl["trained GPT"], kl["uniform"]
    # The numbers the README quotes: KL about 0.13 (Bayes), 0.26 (GPT), 0.31 (uniform), fraction about 0.7.
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
    script.write_text(python[2])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = kl_rows(done.stdout)
    assert {"first lag only", "EM 1-step (from λ=1/m)", "Bayes (exact)"} <= set(rows)
    assert rows["Bayes (exact)"][-1] < rows["first lag only"][-1]
