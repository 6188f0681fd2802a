"""Bad input: a clear ValueError from the library, exit status 2 and nothing written from the CLI."""

import numpy as np
import pytest
import torch

from icmix import MTDTask
from icmix.cli import main
from icmix.estimators.mtd import bayes_exact, bayes_gibbs, em, mirror_descent, predictive

GOOD_PI = np.full((4, 4), 0.25)
GOOD_TOKENS = np.array([[0, 1, 2, 3, 0, 1, 2, 3]])

ESTIMATORS = {
    "md": lambda x, pi, m, **kw: mirror_descent(x, pi, m, 0.1, **kw),
    "em": lambda x, pi, m, **kw: em(x, pi, m, **kw),
    "bayes_exact": lambda x, pi, m, **kw: bayes_exact(x, pi, m, **kw),
    "bayes_gibbs": lambda x, pi, m, **kw: bayes_gibbs(x, pi, m, num_samples=5, burn_in=1, **kw),
}


def bad_rows():
    pi = GOOD_PI.copy()
    pi[1] = [0.5, 0.5, 0.5, 0.0]
    return pi


def negative():
    pi = GOOD_PI.copy()
    pi[2] = [1.2, -0.2, 0.0, 0.0]
    return pi


CASES = {
    "rows not summing to 1": (GOOD_TOKENS, bad_rows(), 2, "row-stochastic"),
    "negative entry": (GOOD_TOKENS, negative(), 2, "negative"),
    "non-square matrix": (GOOD_TOKENS, np.full((4, 3), 1 / 3), 2, "square"),
    "NaN in matrix": (GOOD_TOKENS, np.where(np.eye(4) > 0, np.nan, GOOD_PI), 2, "NaN"),
    "order >= length": (GOOD_TOKENS, GOOD_PI, 8, "order must be smaller"),
    "order < 1": (GOOD_TOKENS, GOOD_PI, 0, "order must be >= 1"),
    "token out of range": (np.array([[0, 1, 4, 2, 1]]), GOOD_PI, 2, r"\[0, 4\)"),
    "negative token": (np.array([[0, -1, 2, 2, 1]]), GOOD_PI, 2, r"\[0, 4\)"),
    "1-D tokens": (GOOD_TOKENS[0], GOOD_PI, 2, r"shape \(B, T\)"),
    "3-D tokens": (GOOD_TOKENS[None], GOOD_PI, 2, r"shape \(B, T\)"),
    "fractional tokens": (GOOD_TOKENS + 0.5, GOOD_PI, 2, "integers"),
}


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_estimators_reject_bad_input(estimator, case):
    tokens, pi, order, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        ESTIMATORS[estimator](torch.as_tensor(tokens), pi, order)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="alpha"):
        bayes_exact(GOOD_TOKENS, GOOD_PI, 2, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        bayes_gibbs(GOOD_TOKENS, GOOD_PI, 2, alpha=alpha, num_samples=5, burn_in=1)
    with pytest.raises(ValueError, match="alpha"):
        MTDTask(4, 2, alpha=alpha)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="eta"):
        mirror_descent(GOOD_TOKENS, GOOD_PI, 2, eta=-0.1)
    with pytest.raises(ValueError, match="steps"):
        mirror_descent(GOOD_TOKENS, GOOD_PI, 2, eta=0.1, steps=0)
    with pytest.raises(ValueError, match="exceeds"):
        mirror_descent(GOOD_TOKENS, GOOD_PI, 2, eta=0.1, lengths=[5, 9])
    with pytest.raises(ValueError, match="lam must have shape"):
        predictive(GOOD_TOKENS, GOOD_PI, np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="order must be smaller"):
        MTDTask(4, 3).sample(2, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        MTDTask(1, 1)


@pytest.mark.parametrize("case", ["rows not summing to 1", "negative entry", "order >= length", "token out of range"])
def test_cli_estimate_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, case):
    tokens, pi, order, match = CASES[case]
    np.save(tmp_path / "tokens.npy", tokens)
    np.save(tmp_path / "pi.npy", pi)
    out = tmp_path / "out.csv"
    code = main(["estimate", str(tmp_path / "tokens.npy"), "--transition", str(tmp_path / "pi.npy"),
                 "--order", str(order), "--out", str(out)])
    assert code == 2
    assert "icmix: error:" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi.npy", "tokens.npy"]


def test_cli_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["estimate", str(tmp_path / "nope.npy"), "--transition", "x.npy", "--order", "2"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["reproduce", "mtd-fig3", "--out", str(tmp_path / "r"), "--set", "nonsense=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["reproduce", "mtd-fig3", "--out", str(tmp_path / "r"), "--set", "lengths=(3, 8)"]) == 2
    assert "order must be smaller" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_one_parser_reads_every_key_value_a_user_types():
    """``--set`` on a training config, ``--set`` on a figure's config, ``--grid`` and ``--slurm``
    share ``icmix.overrides``: one value reads the same everywhere."""
    from icmix.experiments import get_figure
    from icmix.overrides import apply_dotted_overrides, apply_overrides, grid_axis, parse_value, split
    from icmix.train.launch import slurm_parameters

    for raw, value in (("3e-4", 3e-4), ("7", 7), ("(8, 16)", (8, 16)), ("[1, 2]", [1, 2]), ("true", True),
                       ("abc", "abc"), ("1.5", 1.5), ("null", None)):
        assert parse_value(raw) == value and type(parse_value(raw)) is type(value), raw
    assert apply_dotted_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "seed=2"]) == {"optim": {"lr": 3e-4}, "seed": 2}
    fig3 = get_figure("mtd-fig3").preset("quick")
    cfg = apply_overrides(fig3, ["lengths=[8, 16]", "n_sequences=7", "seeds=3"])
    assert (cfg.lengths, cfg.n_sequences, cfg.seeds) == ((8, 16), 7, (3,))
    # a tuple of names: a comma list, as --set tracking=wandb,tensorboard reads on a training config
    scaling = get_figure("claims-scaling").preset("long")
    assert apply_overrides(scaling, ["figures=mtd-fig4,mlr-fig3"]).figures == ("mtd-fig4", "mlr-fig3")
    assert apply_overrides(scaling, ["figures=mtd-fig4"]).figures == ("mtd-fig4",)
    assert apply_overrides(scaling, ["figures=[mtd-fig4, mlr-fig3]"]).figures == ("mtd-fig4", "mlr-fig3")
    assert grid_axis("task.order=3, 5") == ["task.order=3", "task.order=5"]
    assert split(" seed =1") == ("seed", "1")
    assert slurm_parameters(["time=2h", "gpus=1"]) == {"time": 120, "gpus_per_node": 1}
    for call, message in ((lambda: split("seed"), "override 'seed' is not of the form key=value"),
                          (lambda: grid_axis("seed="), "--grid seed has no values"),
                          (lambda: apply_overrides(fig3, ["n_sequences=abc"]), "n_sequences must be int"),
                          (lambda: apply_overrides(fig3, ["nope=1"]), "unknown config key 'nope'"),
                          (lambda: slurm_parameters(["partition"]), "--slurm 'partition' is not of the form KEY=VALUE")):
        with pytest.raises(ValueError, match=message):
            call()
