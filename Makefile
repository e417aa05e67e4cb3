# dimerec-dist: the two commands a new machine needs.
#   make install   create .venv here and install the pinned stack (tools/install.sh owns the matrix)
#   make test      the test suite (2 workers), with line coverage of the test processes; fails if dimerec_dist/model drops under 90%
#   make coverage  the same, measuring every process the tests start too (torchrun jobs, servers; slower)
#   make lint      ruff's checks and format check (pyproject.toml [tool.ruff]) over the package, research, tools and tests
#   make format    ruff's formatter, applied
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dimerec-installed
PYTEST_ARGS ?=

.PHONY: install test coverage lint format clean

install: $(STAMP)

# Re-runs only when the install recipe or the package metadata changed.
$(STAMP): tools/install.sh pyproject.toml
	VENV=$(VENV) bash tools/install.sh
	touch $@

# Two pytest workers (pytest-xdist), each taking whole test modules (tests/conftest.py schedules
# them): most tests wait on the processes they start, and one worker leaves a core idle a third of the time.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --cov=dimerec_dist --cov-report=term $(PYTEST_ARGS)
	$(PY) -m coverage report --include='dimerec_dist/model/*' --fail-under=90

coverage: $(STAMP)
	DIMEREC_COVERAGE_PATCH=subprocess $(MAKE) test

lint: $(STAMP)
	$(VENV)/bin/ruff check dimerec_dist research tools tests
	$(VENV)/bin/ruff format --check dimerec_dist research tools tests

format: $(STAMP)
	$(VENV)/bin/ruff format dimerec_dist research tools tests

clean:
	rm -rf $(VENV) .pytest_cache .coverage *.egg-info
