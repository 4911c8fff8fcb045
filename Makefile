# Everything a fresh machine needs goes through these targets (see README).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU build of torch; a plain "torch" requirement would pull a multi-GB CUDA build. A local wheel (pip's
# find-links) is used when there is one, else PyTorch's CPU index.
TORCH  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup test demo clean

setup: $(VENV)/.ssamba-installed

$(VENV)/.ssamba-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" || $(PY) -m pip install --quiet "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest -q

# The main job on a built-in default: synthetic corpus -> pretrain -> fine-tune vs scratch -> evaluate -> efficiency
demo: setup
	$(VENV)/bin/ssamba demo --out ssamba-demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
