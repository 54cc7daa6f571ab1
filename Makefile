# The README's two commands. Both create .venv when it is missing and install torch==2.13.0 FIRST
# (a CPU wheel of it is on every machine here; letting pip choose a torch pulls CUDA packages).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fewbits-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test bench data clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fewbits demo

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS)

# set-up, once: the human-rated sentences (vaderSentiment 3.3.2's sdist, sha256-checked) into
# $FEWBITS_DATA or ~/.cache/fewbits; Fashion-MNIST comes from Debian (apt-get install dataset-fashion-mnist)
data: $(STAMP)
	$(VENV)/bin/fewbits data fetch

bench: $(STAMP)
	$(PY) benchmarks/quantizers.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
