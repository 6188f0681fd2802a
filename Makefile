# `make demo` and `make test` work on a fresh clone: each creates .venv and installs
# what it needs.  torch is pinned to the CPU build that lies on local disk here; GPU
# users install their CUDA build of torch first (see README).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
PLUGIN := $(VENV)/.test-plugin
PLUGIN_SITE := $(VENV)/test-plugin-site
OUT    ?= results/demo
# the zoo run `make demo-zoo` retrains to check the shipped weights (the shortest: 10,000 steps,
# 3 minutes on one core of the AMD EPYC it was trained on)
VERIFY ?= disentangled3-m3-T8-mse-seed0-5a264d8a
# two long-tier runs checked from the checkpoint they ship 1,000 steps before their end (seconds each)
VERIFY_TAIL ?= disentangled3-m3-T32-mse-seed0-d59c24de gpt3-m3-T32-mse-seed0-4c2dbdad
ZOO_OUT ?= results/demo-zoo
# `make test` runs the tests in this many worker processes (pytest-xdist), each with its share of the cores
TEST_JOBS ?= 2

.PHONY: install demo demo-quick demo-zoo test test-slow bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" 2>/dev/null || true
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The tests also check the interpretability extras: nnsight ([interp]) and TransformerLens ([tl],
# about 700 MB of dependencies), installed for `make test` only, not for `make demo`.
INTERP := $(VENV)/.interp
$(INTERP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,interp,tl]"
	touch $(INTERP)

# `make install`: the venv with icmix installed (editable) for your own code and notebooks.
install: $(STAMP)
	@echo "icmix is installed in $(VENV): 'source $(VENV)/bin/activate', then 'import icmix' or 'icmix --help'"

# The test plugin (tests/plugin): a separate distribution whose family, predictor, figure and
# claim reach icmix only through its entry points.  It is installed into a folder of its own that
# only the tests put on their path, so that `make demo` and your own reports never see it.
$(PLUGIN): $(INTERP) tests/plugin/pyproject.toml $(wildcard tests/plugin/icmix_iid/*.py)
	rm -rf $(PLUGIN_SITE)
	$(PY) -m pip install --quiet --no-deps --target $(PLUGIN_SITE) ./tests/plugin
	touch $(PLUGIN)

# `make demo`: every figure of both papers from the shipped model zoo's `cpu` runs, after
# retraining one of them from scratch to check it (`demo-zoo` below).
demo: demo-zoo

# Every figure of both papers at the quick preset, every run trained here (20 to 40 minutes on 2 cores).
demo-quick: $(STAMP)
	$(VENV)/bin/icmix reproduce all --preset quick --no-zoo --out $(OUT)
	@echo "Report of every figure of both papers, with the claims table: $(OUT)/report.html"
	@echo "(Markdown twin: $(OUT)/report.md; claims: $(OUT)/claims.csv; figures and tables: $(OUT)/*.png, *.csv)"

# Every figure of both papers from the `cpu` preset's training runs, taken from the shipped model
# zoo and evaluated at the `demo` preset's sizes, after retraining one zoo run from scratch to
# check it (the report shows the check).  `icmix reproduce all --preset cpu` evaluates them in full.
demo-zoo: $(STAMP)
	$(VENV)/bin/icmix zoo verify $(VERIFY) --out $(ZOO_OUT) --no-progress
	for run in $(VERIFY_TAIL); do $(VENV)/bin/icmix zoo verify --tail $$run --out $(ZOO_OUT) --no-progress || exit 1; done
	$(VENV)/bin/icmix reproduce all --preset demo --out $(ZOO_OUT)
	@# the README quotes this table (measured on a 2-core AMD EPYC): a difference is printed, not fatal here
	-$(PY) tools/readme_claims.py README.md $(ZOO_OUT)/claims.csv
	@echo "Report of every figure of both papers from the model zoo, with the claims table: $(ZOO_OUT)/report.html"
	@echo "Report: $(ZOO_OUT)/report.html"

# The layers contract (pyproject.toml's [tool.importlinter]), the docstring check ([tool.ruff]),
# then the tests.
test: $(PLUGIN)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check --quiet src/icmix
	ICMIX_TEST_PLUGIN_SITE=$(PLUGIN_SITE) $(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS)

test-slow: $(PLUGIN)
	ICMIX_TEST_PLUGIN_SITE=$(PLUGIN_SITE) $(PY) -m pytest -q -m slow

# `make docs`: the documentation site in docs/_build/html (open index.html), warnings as errors;
# the tutorials are executed as it builds (about 3 minutes on 2 cores).
DOCS_STAMP := $(VENV)/.docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "Documentation: docs/_build/html/index.html"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_vs_hf.py
	$(PY) benchmarks/bench_mtd_estimators.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_cli.py
	$(PY) benchmarks/bench_threads.py

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build
