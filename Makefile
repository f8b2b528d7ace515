# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use;
# `make test` also installs Debian's chromium for the browser test (`make browser`).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q
# torch builds that pip installs from this kind of machine's disk (x86_64: CUDA build, runs on CPU)
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

# apt-get as root, else through sudo
APT := $(if $(filter 0,$(shell id -u)),,sudo) apt-get

.PHONY: demo test browser

$(VENV)/.installed: pyproject.toml
	@echo "[1/4] creating the virtual environment $(VENV)"
	@python3 -m venv $(VENV)
	@echo "[2/4] upgrading pip"
	@$(PIP) --upgrade pip
	@echo "[3/4] installing $(TORCH) (for the converter and the reference tests; a few minutes)"
	@$(PIP) $(TORCH)
	@echo "[4/4] installing npsam3 with its convert and dev extras"
	@$(PIP) -e '.[convert,dev]'
	@touch $@

demo: $(VENV)/.installed
	@$(PY) -m npsam3_convert.demo

browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "[browser] installing Debian's chromium and chromium-driver (for the browser test)"; \
		$(APT) update -qq && $(APT) install -y -qq chromium chromium-driver; \
	fi

test: $(VENV)/.installed browser
	$(PY) -m pytest -q
