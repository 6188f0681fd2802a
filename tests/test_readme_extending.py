"""The README's "Extending icmix" section runs as written, from an empty folder: it registers
a new task family (Markov chains with a transition matrix per sequence), trains a small model
on it, evaluates it next to the family's predictors, and adds a predictor to the MTD family."""

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def extending_code() -> str:
    text = README.read_text()
    section = text[text.index("## Extending icmix"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "the section's three python blocks: the family, training, a new predictor"
    return "\n".join(blocks)


def kl_rows(out: str) -> dict[str, list[float]]:
    """``{label: [KL per length]}`` from the printed pivot tables."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s+((?:\d+\.\d+\s*)+)$", line)
        if m and not line.startswith("length"):
            rows[m.group(1).strip()] = [float(v) for v in m.group(2).split()]
    return rows


def test_readme_extending_runs_as_written(tmp_path):
    script = tmp_path / "extending.py"
    script.write_text(extending_code())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = kl_rows(done.stdout)
    bayes, model, uniform = rows["Bayes (Dirichlet counts)"], rows["trained GPT"], rows["uniform"]
    assert len(bayes) == 4 and (tmp_path / "runs" / "markov" / "model" / "model.safetensors").exists()
    assert bayes[-1] < model[-1] < uniform[-1]  # the trained model learned something, Bayes is the floor
    assert all(b <= u for b, u in zip(bayes, uniform))
    # The predictor added to the MTD family sits in the family's line-up, k-step EM too.
    assert {"first lag only", "EM 1-step (from λ=1/m)", "Bayes (exact)"} <= set(rows)
    assert rows["Bayes (exact)"][-1] < rows["first lag only"][-1]
