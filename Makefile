# Everything runs from a virtual environment that `make install` creates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/ingest-worker demo

test: install
	$(BIN)/python -m pytest -q

# Throughput and latency on the embedded servers (or KAFKA_BOOTSTRAP_SERVERS
# and DATABASE_URL); options after ARGS=, e.g. make bench ARGS="--runs 3".
bench: install
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
