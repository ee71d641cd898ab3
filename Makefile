# mmddaq: make install | make test | make demo | make benchmark
# The environment lives outside the checkout so every clone reuses it;
# override with MMDDAQ_VENV=/path/to/venv.
MMDDAQ_VENV ?= $(HOME)/.cache/mmddaq/venv-py311-torch2.14.1
PY := $(MMDDAQ_VENV)/bin/python
export MMDDAQ_VENV

.PHONY: install test demo benchmark shapes

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

demo: install
	$(PY) tools/demo.py

# hours on 2 CPU cores; finished runs in the JSON files are skipped
benchmark: install
	$(PY) tools/benchmark.py --suite digits --out docs/benchmarks/digits_r22.json
	$(PY) tools/benchmark.py --suite shapes-retinanet --out docs/benchmarks/shapes_r12.json --bits 8 4
	$(PY) tools/benchmark.py --suite shapes-faster-rcnn --out docs/benchmarks/shapes.json --bits 8 4 --iters 200
	$(PY) tools/benchmark.py --suite frozenbn-retinanet --out docs/benchmarks/frozenbn_r17.json --bits 8 4 3
	$(PY) tools/benchmark.py --suite frozenbn-faster-rcnn --out docs/benchmarks/frozenbn-frcnn_r19.json --bits 8 4
	$(PY) tools/benchmark.py --suite frozenbn-retinanet-p3 --out docs/benchmarks/frozenbn-p3_r24.json --bits 8 4
	$(PY) tools/benchmark.py --suite speed --random-weights --out docs/benchmarks/speed_r13.json --methods ddaq ddaq-kd

shapes: install
	$(PY) tools/make_shapes.py --out data/shapes
	$(PY) tools/make_shapes.py --preset small
	$(PY) tools/make_shapes.py --preset patches
