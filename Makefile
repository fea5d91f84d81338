PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: setup lint test test-all demo bench clean

# Idempotent: create the venv once, install the CPU torch wheel only if torch is missing,
# then the package with its dev extra. timesformer-pytorch is installed --no-deps so that
# it can never pull a CUDA torch build. Whatever was installed is then compiled to bytecode,
# on every core: where PYTHONDONTWRITEBYTECODE is set (as on our CI machines) nothing else ever
# writes it, and every process would compile each module it imports from source (the clean-clone
# tests took 10 min 36 s so, multi-process tests 2-3x their time). pip's own compile runs on one
# core (56 s of a fresh setup here, against 28 s on two). A marker file keeps an interrupted
# setup's compile owed. The check finds the packages without importing them (importing them all
# took 8 s of every `make demo`).
setup:
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
		|| ( $(PIP) install -q --no-compile torch==2.13.0 && touch .venv/.uncompiled )
	@$(PY) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
		timesformer pytest transformers einops safetensors av matplotlib onnxruntime yaml torchao fastapi uvicorn \
		multipart httpx playwright ruff peft kornia tensorboard openvino nncf prometheus_client timesformer_pytorch \
		2>/dev/null || ( $(PIP) install -q --no-compile -e '.[dev]' \
			&& $(PIP) install -q --no-compile --no-deps timesformer-pytorch==0.4.1 && touch .venv/.uncompiled )
	@test ! -f .venv/.uncompiled || { $(PY) -m compileall -qq -j 0 .venv/lib src 2>/dev/null || true; rm .venv/.uncompiled; }

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
