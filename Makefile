# Every target sets itself up: a fresh clone needs nothing but python3 (>= 3.10).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Offline, the demo uses the evaluation checkpoint in ../shared when present; elsewhere timm downloads
# an ImageNet ViT-B/16 (override with: make demo DEMO_MODEL="--weights FILE" or "--model NAME").
DEMO_WEIGHTS := $(wildcard ../shared/eval/models/dinov2_vits14_davis20.safetensors)
DEMO_MODEL   ?= $(if $(DEMO_WEIGHTS),--weights $(DEMO_WEIGHTS),--model vit_base_patch16_224.augreg2_in21k_ft_in1k)

demo: $(STAMP)   ## explain the image shipped in assets/ and write outputs/demo.png
	$(VENV)/bin/caap explain assets/demo.jpg $(DEMO_MODEL) --out outputs/demo.png

test: $(STAMP)   ## the whole test suite
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) benchmarks/bench_forward.py
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_caap.py

clean:
	rm -rf $(VENV) outputs
