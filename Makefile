# Two commands do everything: `make demo` and `make test`. Both build .venv/ once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MEDFILIP_HOME ?= $(CURDIR)/.medfilip

.PHONY: setup demo test ui mlflow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test,deploy]"
	touch $@

demo: setup
	$(BIN)/medfilip demo

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/medfilip ui

mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MEDFILIP_HOME)/mlflow.db -h 127.0.0.1 -p 5000

clean:
	rm -rf $(MEDFILIP_HOME)
