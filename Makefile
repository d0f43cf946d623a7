# Lookalike — the README's two commands are `make run` and `make test`.
CATALOGUE ?= $(firstword $(wildcard ../shared/datasets/clothing-small/train) var/sample-catalogue)
PYTEST_ARGS ?=
# make bench BENCH_ARGS=--quick (see bench/README.md)
BENCH_ARGS ?=

.PHONY: setup run test test-stress bench protos check-protos validate-deploy

setup:
	@scripts/setup.sh

run: setup
	@[ -d "$(CATALOGUE)" ] || .venv/bin/python scripts/sample_catalogue.py var/sample-catalogue
	.venv/bin/lookalike serve --index "$(CATALOGUE)"

test: setup
	.venv/bin/python scripts/gen_protos.py --check
	.venv/bin/python scripts/gen_openapi.py --check
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)

# The suite twice in a row beside a CPU hog on every core (stress-ng --cpu N; scripts/with_cpu_hog.sh):
# proves the tests hold on a loaded machine. make test-stress PYTEST_ARGS=tests/unit STRESS_RUNS=1
STRESS_RUNS ?= 2
test-stress: setup
	.venv/bin/python scripts/gen_protos.py --check
	scripts/with_cpu_hog.sh bash -c 'for run in $$(seq $(STRESS_RUNS)); do echo "test-stress: run $$run of $(STRESS_RUNS)"; .venv/bin/python -m pytest -ra -p no:cacheprovider $(PYTEST_ARGS) || exit 1; done'

bench: setup
	@.venv/bin/python -c "import matplotlib, onnxruntime, onnx" 2>/dev/null || .venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python bench/run.py $(BENCH_ARGS)

validate-deploy: setup
	scripts/validate_deploy.sh

protos:
	.venv/bin/python scripts/gen_protos.py
	.venv/bin/python scripts/gen_openapi.py
