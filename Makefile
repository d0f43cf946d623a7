# Lookalike — the README's two commands are `make run` and `make test`.
CATALOGUE ?= $(firstword $(wildcard ../shared/datasets/clothing-small/train) var/sample-catalogue)
PYTEST_ARGS ?=
# make bench BENCH_ARGS=--quick (see bench/README.md)
BENCH_ARGS ?=

.PHONY: setup run test bench protos check-protos validate-deploy

setup:
	@scripts/setup.sh

run: setup
	@[ -d "$(CATALOGUE)" ] || .venv/bin/python scripts/sample_catalogue.py var/sample-catalogue
	.venv/bin/lookalike serve --index "$(CATALOGUE)"

test: setup
	.venv/bin/python scripts/gen_protos.py --check
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)

bench: setup
	@.venv/bin/python -c "import matplotlib, onnxruntime, onnx" 2>/dev/null || .venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python bench/run.py $(BENCH_ARGS)

validate-deploy: setup
	scripts/validate_deploy.sh

protos:
	.venv/bin/python scripts/gen_protos.py
