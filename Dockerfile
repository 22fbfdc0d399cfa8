# syntax=docker/dockerfile:1
# nnserve image: a wheel built in a throw-away stage, installed into a slim runtime that holds
# no compiler, no build tool and no pip cache. tests/test_dockerfile_replay.py replays this
# file's steps on a machine without a Docker engine, so keep each step a plain command.

# Builder: turns the checkout into one wheel. The shipped models in models/ become the package
# data of app.shipped_models, so the wheel (and the image) carries them.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nnlib/ nnlib/
COPY app/ app/
COPY models/ models/
RUN pip wheel --no-deps --wheel-dir /dist .

# Runtime: the wheel and its dependencies (all of them ship manylinux wheels), nothing else.
FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="nnserve" \
      org.opencontainers.image.description="numpy neural networks served over HTTP (REST, Open Inference Protocol V2, Prometheus metrics)" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Settings of the service (the README lists them all). NNSERVE_DRAIN_DELAY (0 here) plus the
# graceful timeout stay below the 10 s that `docker stop` waits before its SIGKILL; compose and
# Kubernetes allow more.
ENV NNSERVE_PORT=8000 \
    NNSERVE_WORKERS=1 \
    NNSERVE_LOG_LEVEL=info \
    NNSERVE_GRACEFUL_TIMEOUT=8
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 nnserve \
    && useradd --system --uid 10001 --gid nnserve --no-log-init --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin nnserve
# The wheel is bind-mounted from the builder for this one step, so it is not left in a layer.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir /dist/*.whl
# An empty, root-owned working directory: the server writes nowhere but /tmp (a tmpfs in
# compose and Kubernetes, where the root filesystem is read-only).
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# No curl in the image: Python asks /ready, which fails until the models are loaded and again
# while the server drains. urlopen raises on any non-2xx answer, so the exit status is 1 then.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NNSERVE_PORT', '8000') + '/ready', timeout=4)"]
# Exec form: nnserve is PID 1 and gets SIGTERM itself (drain, then exit). Port, workers, log
# level and the rest come from the NNSERVE_* environment above.
CMD ["nnserve", "--host", "0.0.0.0"]
