# Two commands do everything: `make demo` and `make test`. Both build .venv/ once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MEDFILIP_HOME ?= $(CURDIR)/.medfilip

.PHONY: setup setup-test demo test ui mlflow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e .
	touch $@

# The test extra builds llama.cpp's server from its sdist (minutes, once: pip caches the wheel),
# portable: a native build dies with SIGILL on CPUs that advertise instructions they cannot run.
# `make demo` never needs it.
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test,deploy]"
	touch $@

demo: setup
	$(BIN)/medfilip demo

test: setup-test
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/medfilip ui

mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MEDFILIP_HOME)/mlflow.db -h 127.0.0.1 -p 5000

clean:
	rm -rf $(MEDFILIP_HOME)
