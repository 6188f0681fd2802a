# `make demo` and `make test` work on a fresh clone: each creates .venv and installs
# what it needs.  torch is pinned to the CPU build that lies on local disk here; GPU
# users install their CUDA build of torch first (see README).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
OUT    ?= results/demo

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23" 2>/dev/null || true
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/icmix reproduce all --preset quick --out $(OUT)
	@echo "Report of every figure of both papers, with the claims table: $(OUT)/report.html"
	@echo "(Markdown twin: $(OUT)/report.md; claims: $(OUT)/claims.csv; figures and tables: $(OUT)/*.png, *.csv)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_vs_hf.py
	$(PY) benchmarks/bench_mtd_estimators.py
	$(PY) benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) results .pytest_cache
