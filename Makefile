# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch builds that pip installs from this kind of machine's disk (x86_64: CUDA build, runs on CPU)
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[convert,dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m npsam3_convert.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q
