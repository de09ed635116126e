# loom: the two commands (README.md) plus build helpers.
#
#   make test    install missing OS packages (as root), configure, build, run ctest
#   make demo    train an MLP, then the small CNN, on Fashion-MNIST with `loom train` (the main job)
#   make build   configure and build only
#   make python  build the Python package's extension (python/loom/_C*.so; PYTHONPATH=python)
#   make bench   benchmarks side by side with PyTorch (bench/run.py)
#   make bench-serve  `loom serve` under wrk: batch-1 against dynamic batching (bench/serve/run.py);
#                     then its OpenAI completions: streams, TTFT, KV cache, speculative decoding (llm.py)
#   make llm-models   train the character GPT and its draft model that `loom serve` and bench-serve use
#   make gpu-check    build with CUDA and run every CUDA test on this machine's GPU (fails without one)
#   make bench-gpu    loom on the GPU against cuBLAS, cudaMemcpy, the H100's peaks and llm.c (bench/bench_gpu.cpp)
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

.PHONY: all test gpu-check openai-client build python bench bench-gpu bench-serve gpt-parity demo clean deps bench-deps bench-serve-deps configure

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

test: build openai-client
	cd $(BUILD_DIR) && ctest $(CTEST_ARGS)

# The CUDA suites (label cuda) on this machine's GPU: they skip in `make
# test` where there is none, so here a skip is a failure (tests/cuda/gpu_check.sh).
GPU_BUILD_DIR ?= build-gpu
gpu-check: deps
	cmake -S . -B $(GPU_BUILD_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_TESTS=ON -DLOOM_CUDA=ON -DLOOM_ASAN_TESTS=OFF
	cmake --build $(GPU_BUILD_DIR) -j$(JOBS) --target test_cuda_runtime test_cuda_elementwise test_cuda_reduce test_cuda_blas \
	  test_cuda_conv test_cuda_attention test_cuda_paged_quant test_nccl
	tests/cuda/gpu_check.sh $(GPU_BUILD_DIR)

# The official `openai` npm client, pinned by tests/serve/openai_client's
# lock file, for test_openai_cli. Without npm, or without the registry, the
# test reads the streams with its own HTTP client only, and says so.
openai-client:
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "note: no npm here; test_openai_cli skips the openai npm client"; \
	elif ! (cd tests/serve/openai_client && npm ci --no-audit --no-fund --loglevel=error); then \
	  echo "note: npm ci in tests/serve/openai_client failed (is the npm registry reachable?); test_openai_cli skips the openai npm client"; \
	fi

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

# loom's CUDA backend against its references (issue 23; bench/bench_gpu.cpp):
# SGEMM/HGEMM against cuBLAS, add/mul/copy against cudaMemcpy's bandwidth,
# causal attention against the H100's peaks, and GPT-2 124M training
# tokens/s; prints the table, raw numbers in $(BENCH_DIR)/bench_gpu_results.json.
# Exits with status 2, saying why, where there is no GPU or no CUDA build.
# BENCH_GPU_ARGS: e.g. "--only gemm,attention", "--reps 20",
# "--llmc-tokens-per-s N" (llm.c's figure, to print loom / llm.c).
BENCH_GPU_ARGS ?=
bench-gpu: bench-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target bench_gpu
	$(BENCH_DIR)/bench/bench_gpu --json $(BENCH_DIR)/bench_gpu_results.json $(BENCH_GPU_ARGS)

# `loom serve` with the CNN under load from wrk (loopback, the server and wrk
# on the same cores): batch-1 serving against dynamic batching at 1 to 64
# connections, binary and JSON request bodies, the health endpoint, resident
# memory over 100,000 requests, and the same CNN in process (PyTorch, and
# loom's forward as the server times it) as a ceiling; prints the tables and
# the issue's targets (PASS/FAIL), raw numbers in
# $(BENCH_DIR)/bench_serve_results.json. A few minutes. Then the LLM group
# (bench/serve/llm.py, skipped with a message until `make llm-models` has
# written $(LLM_DIR)): the OpenAI completions API, streamed, as a client sees
# it: tokens/s of 8 concurrent streams against one at a time, time to first
# token, live KV-cache positions against allocated ones under mixed lengths,
# and greedy decoding with the draft model (K = 2, 3, 4, 6) against without.
# BENCH_SERVE_THREADS: the CNN servers' compute threads (and torch's);
# BENCH_LLM_THREADS: every LLM server's (default: all cores; the client only
# reads streams); BENCH_SERVE_ARGS: more flags, e.g. "--only llm", "--only
# cnn", "--duration 2 --repeats 1 --bodies binary", "--delay-sweep
# 0,1000,2000" or "--llm-repeats 1 --llm-spec-k 4".
BENCH_SERVE_THREADS ?= 1
BENCH_LLM_THREADS   ?= $(JOBS)
BENCH_SERVE_ARGS    ?=

bench-serve: bench-serve-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target loom_cli
	$(PYTHON) bench/serve/run.py --build-dir $(BENCH_DIR) --python $(PYTHON) --threads $(BENCH_SERVE_THREADS) \
	  --llm-dir $(LLM_DIR) --llm-threads $(BENCH_LLM_THREADS) $(BENCH_SERVE_ARGS)

# The same GPT (4 layers, d_model 256, 4 heads, context 128, batch 16, AdamW
# 3e-4) trained in loom and in PyTorch from the same initial weights on the
# same batches of the fortunes corpus; prints both validation-loss curves and
# whether they agree within 0.05 nats. PARITY_ARGS: e.g. --steps 300.
PARITY_ARGS ?=
gpt-parity: bench-deps
	cmake -S . -B $(BENCH_DIR) -DCMAKE_BUILD_TYPE=Release -DLOOM_BUILD_BENCH=ON -DLOOM_BUILD_TESTS=OFF
	cmake --build $(BENCH_DIR) -j$(JOBS) --target gpt_parity
	$(PYTHON) bench/gpt_parity.py --bin $(BENCH_DIR)/bench/gpt_parity --out $(BENCH_DIR)/gpt_parity --threads $(BENCH_THREADS) $(PARITY_ARGS)

# Models worth serving (issue 22): a character GPT of 6 layers (d_model 384,
# 6 heads, context 256; 10.8M parameters) and a 2-layer draft for speculative
# decoding (d_model 256, 4 heads; 1.7M parameters, a greedy decode step about
# 1/10 of the GPT's), each trained by `loom train` on the fortune cookies of
# the Debian package `fortunes` (LLM_TEXT; DEPS installs it) with the same
# seed, so both see the same batches and get the same character tokenizer
# (checked: their "loom.tokenizer" metadata must be equal). 540 steps of 8
# windows of 256 characters (1.1M characters, half the corpus), cosine decay
# from lr 5e-4 for the GPT (1e-3 and 2e-3 learned slower: there is no warm-up)
# and 1e-3 for the draft. About 20 minutes on 2 idle cores (the GPT ~1.85 s a
# step, the draft ~0.31 s), 25 with a compiler beside it. Prints the corpus,
# each model's validation loss (nats per character, from the metrics CSV),
# the wall times and both models' greedy decode speed. Serve them with
# `loom serve --model gpt=$(LLM_DIR)/gpt.safetensors --draft-model
# $(LLM_DIR)/draft.safetensors`; `make bench-serve` measures them.
LLM_DIR        ?= $(BUILD_DIR)/llm
LLM_TEXT       ?= /usr/share/games/fortunes
LLM_GPT        ?= $(LLM_DIR)/gpt.safetensors
LLM_DRAFT      ?= $(LLM_DIR)/draft.safetensors
LLM_THREADS    ?= $(JOBS)
LLM_TRAIN      ?= --context 256 --batch-size 8 --max-steps 540 --eval-every 90 --eval-batches 10 \
                  --schedule cosine --seed 0
LLM_GPT_ARGS   ?= --layers 6 --d-model 384 --heads 6 --lr 0.0005
LLM_DRAFT_ARGS ?= --layers 2 --d-model 256 --heads 4 --lr 0.001

# $(call llm_train,name,checkpoint,model flags): one `loom train` with its
# output shown and kept in $(LLM_DIR)/name.log, its metrics CSV started
# afresh, and its wall time in $(LLM_DIR)/name.seconds.
define llm_train
	@rm -f $(LLM_DIR)/$(1).csv $(LLM_DIR)/$(1).rc $(LLM_DIR)/$(1).seconds
	@t0=$$(date +%s); \
	{ $(BUILD_DIR)/loom train --model gpt --dataset text:$(LLM_TEXT) $(3) $(LLM_TRAIN) --threads $(LLM_THREADS) \
	    --out $(2) --metrics $(LLM_DIR)/$(1).csv; echo $$? > $(LLM_DIR)/$(1).rc; } 2>&1 | tee $(LLM_DIR)/$(1).log; \
	test "$$(cat $(LLM_DIR)/$(1).rc)" = 0 || { echo "llm-models: training $(1) failed"; exit 1; }; \
	echo $$(( $$(date +%s) - t0 )) > $(LLM_DIR)/$(1).seconds
endef

.PHONY: llm-models
llm-models: configure
	cmake --build $(BUILD_DIR) -j$(JOBS) --target loom_cli
	@mkdir -p $(LLM_DIR)
	@echo "corpus: the Debian package fortunes $$(dpkg-query -W -f='$${Version}' fortunes 2>/dev/null), $(LLM_TEXT)"
	@date +%s > $(LLM_DIR)/start.seconds
	$(call llm_train,gpt,$(LLM_GPT),$(LLM_GPT_ARGS))
	$(call llm_train,draft,$(LLM_DRAFT),$(LLM_DRAFT_ARGS))
	@echo
	@$(PYTHON) bench/serve/llm.py --check-models --loom $(BUILD_DIR)/loom --llm-dir $(LLM_DIR) --llm-gpt $(LLM_GPT) \
	  --llm-draft $(LLM_DRAFT)
	@echo "llm-models: $$(( ($$(date +%s) - $$(cat $(LLM_DIR)/start.seconds)) / 60 )) min $$(( ($$(date +%s) - $$(cat $(LLM_DIR)/start.seconds)) % 60 )) s in all"

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
	rm -rf $(BUILD_DIR) $(BENCH_DIR) $(GPU_BUILD_DIR)
