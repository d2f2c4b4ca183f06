# The two set-up commands of README.md: `make demo` (main job) and `make test` (the tests).
SHELL := /bin/bash
VENV ?= .venv

.PHONY: venv demo test
venv:
	@./scripts/bootstrap.sh

demo: venv
	@source scripts/ros_env.sh && $(VENV)/bin/magma demo --out out/demo

test: venv
	@source scripts/ros_env.sh && $(VENV)/bin/python -m pytest -q
