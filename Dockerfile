# syntax=docker/dockerfile:1.7
# talkmesh: one Dockerfile for every service's image. The service is a build argument:
#
#   docker build --build-arg SERVICE=renderer -t ghcr.io/talkmesh/renderer:0.1.0 .
#   docker build --build-arg SERVICE=renderer --target gpu -t ghcr.io/talkmesh/renderer:0.1.0-gpu .
#   make images images-gpu        # every service (IMAGES and GPU_IMAGES in the Makefile)
#
# Build from the repository root (the context is the checkout, filtered by .dockerignore: no tests,
# docs, benchmarks or model tools go into an image). Targets:
#   cpu (default)  python:3.12-slim, onnxruntime (CPU)
#   gpu            the same base and Python, plus the GPU stack of deploy/gpu-stack.yaml: onnxruntime-gpu
#                  with CUDA, cuDNN and TensorRT runtime libraries from pinned NVIDIA wheels. The build
#                  fails when a library ONNX Runtime's CUDA/TensorRT providers need is missing.
# The encoder needs no gpu target: NVENC is in the FFmpeg of the PyAV wheel and loads the driver's
# libnvidia-encode, which the NVIDIA container runtime mounts (NVIDIA_DRIVER_CAPABILITIES=video).
#
# Every image runs `talkmesh serve $SERVICE --config /etc/talkmesh/config.yaml` as uid 10001, writes only
# to /tmp and /home/talkmesh/.cache (read-only root filesystem), and installs talkmesh with
# scripts/install.sh, the same install command as the README and the Makefile. Its config is the
# container config deploy/k8s/base/config/$SERVICE.yaml (Kubernetes mounts the ConfigMap over it).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG SERVICE

# ---- build: a virtual environment with talkmesh and the service's extras ---------------------------
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY scripts/install.sh scripts/install.sh
COPY talkmesh talkmesh
COPY services services
RUN test -n "${SERVICE}" && test -d "services/${SERVICE}" \
 || { echo "build with --build-arg SERVICE=<one of: $(ls services | grep -v __)>" >&2; exit 1; }
RUN python -m venv /opt/talkmesh
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP=/opt/talkmesh/bin/pip scripts/install.sh "${SERVICE}"

# ---- build (GPU): the same install plus the `gpu` extra (the pinned GPU stack) ------------------------
FROM build AS build-gpu
ARG SERVICE
# tensorrt-cu12-libs comes from NVIDIA's package index (its PyPI project is a stub that downloads from there).
ENV PIP_EXTRA_INDEX_URL=https://pypi.nvidia.com
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP=/opt/talkmesh/bin/pip scripts/install.sh "${SERVICE},gpu"

# ---- runtime: what every image shares ----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
RUN groupadd --system --gid 10001 talkmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/talkmesh --create-home talkmesh \
 && mkdir -p /home/talkmesh/.cache /etc/talkmesh/tls /etc/talkmesh/keys \
 && chown -R 10001:10001 /home/talkmesh
COPY LICENSE /usr/share/doc/talkmesh/LICENSE
COPY deploy/k8s/base/config/${SERVICE}.yaml /etc/talkmesh/config.yaml
ENV TALKMESH_SERVICE=${SERVICE} \
    PATH=/opt/talkmesh/bin:$PATH \
    HOME=/home/talkmesh \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
WORKDIR /home/talkmesh
VOLUME ["/home/talkmesh/.cache"]
# Liveness, as Kubernetes' livenessProbe (health service "liveness": SERVING while the process
# answers, also while it warms up or drains; readiness would call a service unhealthy whenever a
# stage it calls is down), on the port (and with the TLS settings) of the service's own config; for
# the HTTP edge (web), GET /healthz. The start period is the startupProbe's budget (3 minutes: model
# warm-up); interval, timeout and retries are the livenessProbe's.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD python -m talkmesh.healthcheck --service "$TALKMESH_SERVICE" --config /etc/talkmesh/config.yaml --check liveness
STOPSIGNAL SIGTERM
# `exec` replaces the shell, so talkmesh is PID 1 and gets SIGTERM directly.
ENTRYPOINT ["/bin/sh", "-c", "exec talkmesh serve \"$TALKMESH_SERVICE\" --config /etc/talkmesh/config.yaml \"$@\"", "talkmesh"]

# ---- runtime (GPU): docker build --target gpu ... ----------------------------------------------------
FROM runtime AS gpu
COPY --from=build-gpu /opt/talkmesh /opt/talkmesh
# Put the wheels' CUDA, cuDNN and TensorRT libraries on the loader's path (ld.so.conf.d + ldconfig), then
# fail the build if anything the providers need does not resolve (deploy/docker/gpu_libs.py).
RUN --mount=type=bind,source=deploy,target=/mnt/deploy \
    /opt/talkmesh/bin/python /mnt/deploy/docker/gpu_libs.py register \
 && /opt/talkmesh/bin/python /mnt/deploy/docker/gpu_libs.py check /mnt/deploy/gpu-stack.yaml
USER 10001:10001

# ---- runtime (CPU, the default target: the last stage) -------------------------------------------------
FROM runtime AS cpu
COPY --from=build /opt/talkmesh /opt/talkmesh
USER 10001:10001
