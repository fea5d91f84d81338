PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: setup lint test test-all demo bench clean

# Idempotent: create the venv once, install the CPU torch wheel only if torch is missing,
# then the package with its dev extra. timesformer-pytorch is installed --no-deps so that
# it can never pull a CUDA torch build. pip compiles the bytecode at install: where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines), nothing else ever writes it, and every
# process would compile each module it imports from source (the clean-clone tests took 10 min 36 s
# so, multi-process tests 2-3x their time). The check finds the packages without importing them
# (importing them all took 8 s of every `make demo`).
setup:
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" || $(PIP) install -q torch==2.13.0
	@$(PY) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
		timesformer pytest transformers einops safetensors av matplotlib onnxruntime yaml torchao fastapi uvicorn \
		multipart httpx playwright ruff peft kornia tensorboard openvino nncf prometheus_client timesformer_pytorch \
		2>/dev/null || ( $(PIP) install -q -e '.[dev]' && $(PIP) install -q --no-deps timesformer-pytorch==0.4.1 )

lint: setup
	$(PY) -m ruff check src tests benchmarks hubconf.py
	$(PY) -m ruff format --check src tests benchmarks hubconf.py

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ''

demo: setup
	$(PY) -m timesformer demo

bench: setup
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf .venv build *.egg-info src/*.egg-info .pytest_cache
