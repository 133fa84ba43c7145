# Thin wrappers around scripts/dev.py (which needs nothing but Python >= 3.10).
PYTHON ?= python3

.PHONY: demo test check pytest bench install clean
demo test check install:
	$(PYTHON) scripts/dev.py $@
pytest:
	$(PYTHON) scripts/dev.py pytest $(ARGS)
bench:
	$(PYTHON) scripts/dev.py bench $(ARGS)
clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo
