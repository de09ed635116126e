# loom: the two commands (README.md) plus build helpers.
#
#   make test    install missing OS packages (as root), configure, build, run ctest
#   make demo    train an MLP, then the small CNN, on Fashion-MNIST with `loom train` (the main job)
#   make build   configure and build only
#   make python  build the Python package's extension (python/loom/_C*.so; PYTHONPATH=python)
#   make bench   benchmarks side by side with PyTorch (bench/run.py)
#   make bench-serve  `loom serve` under wrk: batch-1 against dynamic batching (bench/serve/run.py)
#   make clean   remove build directories

BUILD_DIR  ?= build
BENCH_DIR  ?= build-bench
BUILD_TYPE ?= Release
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_ARGS ?= --output-on-failure --no-tests=error -j$(JOBS)
# The Debian python that sees python3-torch (a pyenv or venv python may not).
PYTHON     ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)

DEPS       := build-essential cmake libgtest-dev libgmock-dev libbenchmark-dev libomp-dev zlib1g-dev \
              nlohmann-json3-dev libcli11-dev libpng-dev dataset-fashion-mnist fortunes \
              openmpi-bin libopenmpi-dev pkg-config libcpp-httplib-dev \
              python3-dev pybind11-dev python3-numpy python3-pytest python3-torch python3-setuptools \
              python3-venv python3-pip
BENCH_DEPS := python3 python3-torch libtorch-dev libopenblas0-pthread
BENCH_SERVE_DEPS := wrk

# $(call ensure_packages,pkgs): installs the Debian packages in `pkgs` that
# are missing. `apt-get update` runs only when something is missing; without
# root, the missing ones are listed and the build goes on.
define ensure_packages
	@if ! command -v dpkg >/dev/null 2>&1; then \
	  echo "note: no dpkg here; not checking OS packages ($(strip $(1)))"; \
	else \
	  missing=""; \
	  for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	  done; \
	  if [ -z "$$missing" ]; then \
	    true; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    echo "installing missing packages:$$missing"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y install --no-install-recommends $$missing; \
	  else \
	    echo "warning: missing packages:$$missing (not root, so not installing them; the build may fail)"; \
	  fi; \
	fi
endef

.PHONY: all test build python bench bench-serve gpt-parity demo clean deps bench-deps bench-serve-deps configure

all: build

deps:
	$(call ensure_packages,$(DEPS))

bench-deps:
	$(call ensure_packages,$(DEPS) $(BENCH_DEPS))

bench-serve-deps:
	$(call ensure_packages,$(DEPS) $(BENCH_DEPS) $(BENCH_SERVE_DEPS))

configure: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLOOM_BUILD_TESTS=ON

build: configure
	cmake --build $(BUILD_DIR) -j$(JOBS)

python: configure
	cmake --build $(BUILD_DIR) -j$(JOBS) --target loom_python

test: build
	cd $(BUILD_DIR) && ctest $(CTEST_ARGS)

# Builds loom's benchmarks (bench_ops, bench_graph, bench_compile), the
# libtorch dispatch reference and the `loom` command (for the MLP and CNN
# epochs), then bench/run.py runs them against PyTorch on BENCH_THREADS threads
# and prints the table; raw numbers go to $(BENCH_DIR)/bench_results.json.
# BENCH_ARGS passes more flags to run.py, e.g. make bench BENCH_ARGS="--only
# sgemm,dispatch", BENCH_ARGS="--only graph" (compiled and checkpointed steps)
# or BENCH_ARGS="--only compile" (fusion and the parallel scheduler), or
# BENCH_ARGS="--only quant" (int8 / int4 generation against float32).
BENCH_THREADS ?= $(JOBS)
BENCH_ARGS    ?=

bench: bench-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target loom_bench
	$(PYTHON) bench/run.py --build-dir $(BENCH_DIR) --python $(PYTHON) --threads $(BENCH_THREADS) $(BENCH_ARGS)

# `loom serve` with the CNN under load from wrk (loopback, the server and wrk
# on the same cores): batch-1 serving against dynamic batching at 1 to 64
# connections, binary and JSON request bodies, the health endpoint, resident
# memory over 100,000 requests, and the same CNN in process (PyTorch, and
# loom's forward as the server times it) as a ceiling; prints the tables and
# the issue's targets (PASS/FAIL), raw numbers in
# $(BENCH_DIR)/bench_serve_results.json. A few minutes. BENCH_SERVE_THREADS:
# the servers' compute threads (and torch's); BENCH_SERVE_ARGS: more flags,
# e.g. "--duration 2 --repeats 1 --bodies binary" or "--delay-sweep 0,1000,2000".
BENCH_SERVE_THREADS ?= 1
BENCH_SERVE_ARGS    ?=

bench-serve: bench-serve-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target loom_cli
	$(PYTHON) bench/serve/run.py --build-dir $(BENCH_DIR) --python $(PYTHON) --threads $(BENCH_SERVE_THREADS) $(BENCH_SERVE_ARGS)

# The same GPT (4 layers, d_model 256, 4 heads, context 128, batch 16, AdamW
# 3e-4) trained in loom and in PyTorch from the same initial weights on the
# same batches of the fortunes corpus; prints both validation-loss curves and
# whether they agree within 0.05 nats. PARITY_ARGS: e.g. --steps 300.
PARITY_ARGS ?=
gpt-parity: bench-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target gpt_parity
	$(PYTHON) bench/gpt_parity.py --bin $(BENCH_DIR)/bench/gpt_parity --out $(BENCH_DIR)/gpt_parity --threads $(BENCH_THREADS) $(PARITY_ARGS)

# The main job: train the Fashion-MNIST MLP (784-512-256-10, AdamW lr 1e-3,
# batch 128, 5 epochs) with the `loom` command, then classify one test image
# with the checkpoint it wrote; then the same for the small CNN. `configure` installs what is missing first
# (DEPS includes dataset-fashion-mnist).
DEMO_CKPT  ?= $(BUILD_DIR)/fashion_mnist_mlp.safetensors
DEMO_TRAIN ?= --model mlp --dataset fashion-mnist --epochs 5 --batch-size 128 --optimizer adamw --lr 0.001
# The second model: the small CNN (two conv-BN-ReLU-pool stages), ~92% after 5 epochs.
DEMO_CNN_CKPT  ?= $(BUILD_DIR)/fashion_mnist_cnn.safetensors
DEMO_CNN_TRAIN ?= --model cnn --dataset fashion-mnist --epochs 5 --batch-size 128 --optimizer adamw --lr 0.001

demo: configure
	cmake --build $(BUILD_DIR) -j$(JOBS) --target loom_cli
	$(BUILD_DIR)/loom train $(DEMO_TRAIN) --out $(DEMO_CKPT) --metrics $(BUILD_DIR)/fashion_mnist_mlp.csv
	$(BUILD_DIR)/loom predict --model-file $(DEMO_CKPT) --index 0
	$(BUILD_DIR)/loom train $(DEMO_CNN_TRAIN) --out $(DEMO_CNN_CKPT) --metrics $(BUILD_DIR)/fashion_mnist_cnn.csv
	$(BUILD_DIR)/loom predict --model-file $(DEMO_CNN_CKPT) --index 0

clean:
	rm -rf $(BUILD_DIR) $(BENCH_DIR)
