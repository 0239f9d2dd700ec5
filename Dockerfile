# The kdist GPU image for Ray clusters (KubeRay head/worker pods, the vLLM server of the chart):
# CUDA, Python 3.12, torch, the official vLLM, DeepSpeed, Ray and kdist, run as a non-root user.
#
#   docker build -t ghcr.io/kdist/kdist:0.1.0 .
#
# Two stages: the builder has the CUDA compiler (DeepSpeed's fused Adam is built ahead of time,
# so no pod compiles at startup); the runtime image only gets the virtualenv.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS builder

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # DeepSpeed ops compiled at install time, for A100 (8.0), L40S/L4 (8.9) and H100/H200 (9.0).
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0"
RUN python3.12 -m venv /opt/venv

WORKDIR /src
# Dependencies first, from pyproject.toml alone with an empty package: this multi-GB layer is
# rebuilt only when the dependencies change, not on every code change. torch is pinned there
# (the CUDA build), and deepspeed builds its ops against it, so torch goes in first.
COPY pyproject.toml README.md ./
RUN mkdir kdist && touch kdist/__init__.py \
    && pip install "torch==2.13.0" \
    && pip install "/src[gpu]"

COPY kdist ./kdist
RUN pip install --no-deps --force-reinstall /src


FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}

# bash and wget: KubeRay's readiness probes run `wget ... | grep success` in bash.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 bash wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# uid/gid 1000, as the chart's securityContext (runAsUser/fsGroup) expects; Ubuntu's images
# ship a user `ubuntu` with that uid.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && groupadd --gid 1000 kdist \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash kdist

COPY --from=builder /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface

# The RayJob entrypoints (python /opt/kdist/ray_jobs/job.py <stage>) and the example configs.
WORKDIR /opt/kdist
COPY ray_jobs ./ray_jobs
COPY configs ./configs

USER 1000:1000
CMD ["kdist", "--help"]
