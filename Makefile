# The two commands a reader needs: `make book` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
NB ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := module://matplotlib_inline.backend_inline
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test execute report setup assets lock lock-checkov clean environment.yml

# Python environment from the lock; rebuilt when the lock or the package metadata changes.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" > /dev/null
	touch $@

# Checkov (the production-templates chapter's policy checks) pins versions of networkx and packaging
# that the book's lock cannot take: it lives in a virtual environment of its own, from its own lock.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $@

setup: $(VENV)/.installed $(CHECKOV_VENV)/.installed

# Mermaid and MathJax are served by the book itself (pinned in package.json), never from a CDN.
_static/mermaid/mermaid.esm.min.mjs _assets/mathjax/tex-mml-chtml.js &: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	rm -rf _static/mermaid && mkdir -p _static/mermaid/chunks
	cp node_modules/mermaid/dist/mermaid.esm.min.mjs _static/mermaid/
	cp -r node_modules/mermaid/dist/chunks/mermaid.esm.min _static/mermaid/chunks/
	rm -rf _assets/mathjax && mkdir -p _assets/mathjax/output/chtml _assets/mathjax/input/tex
	cp node_modules/mathjax/es5/tex-mml-chtml.js _assets/mathjax/
	cp -r node_modules/mathjax/es5/output/chtml/fonts _assets/mathjax/output/chtml/
	cp -r node_modules/mathjax/es5/input/tex/extensions _assets/mathjax/input/tex/
	cp -r node_modules/mathjax/es5/ui _assets/mathjax/

assets: _static/mermaid/mermaid.esm.min.mjs _assets/mathjax/tex-mml-chtml.js

# Re-run stale notebooks (or the one named by NB=path) and stamp them; rewrites the execution report.
execute: setup
	$(PY) -m labkit.book execute $(NB)

report: setup
	$(PY) -m labkit.book report

book: setup assets execute
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html (serve it: $(PY) -m http.server --bind 127.0.0.1 -d _build/html 8000)"

# Everything CI checks; NB=path narrows it to the notebook checks of one notebook.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval-sanitize.cfg --nbval-cell-timeout 600
test: setup assets
ifeq ($(NB),)
	$(PY) -m pytest --durations=20 tests/test_labkit.py tests/test_operational.py tests/test_tools.py tests/test_harness.py \
	  tests/test_environment.py tests/test_hygiene.py $(NBVAL) $$($(PY) -m labkit.book list) \
	  tests/test_exercises_ran.py tests/test_smoke.py tests/test_tree_clean.py tests/test_book.py tests/test_jupyterlab.py
else
	$(PY) -m pytest tests/test_hygiene.py $(NBVAL) $(NB) tests/test_exercises_ran.py tests/test_smoke.py \
	  tests/test_tree_clean.py --notebook $(NB)
endif

lock:
	$(PY) -m pip install --quiet -r requirements.in
	$(PY) -m pip freeze --exclude-editable | $(PY) tools/make_lock.py > requirements.lock.tmp
	mv requirements.lock.tmp requirements.txt
	$(PY) tools/make_environment.py

lock-checkov:
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==3.3.30
	{ sed -n 1,2p requirements-checkov.txt; $(CHECKOV_VENV)/bin/python -m pip freeze --exclude-editable; } > requirements-checkov.tmp
	mv requirements-checkov.tmp requirements-checkov.txt

# environment.yml (Binder, JupyterHub) is generated from the lock.
environment.yml: requirements.txt
	$(PY) tools/make_environment.py

clean:
	rm -rf _build _static/mermaid _assets/mathjax
