# The gateway's container image (README: Container).
#
#   docker build -t llm-gateway .
#   docker run --rm -p 8080:8080 --stop-timeout 35 -e GATEWAY_API_KEY=... llm-gateway
#   docker run --rm llm-gateway gateway check        # any other gateway command line
#
# Two stages: the builder installs the locked dependencies and the package into a virtualenv;
# the runtime stage copies only that virtualenv onto the same slim base, so no pip cache,
# build tools or sources end up in the image. The config is read from $GATEWAY_CONFIG,
# /etc/gateway/gateway.yaml: the copy of deploy/gateway.yaml baked in here, or a file mounted
# over it (a volume, a Kubernetes ConfigMap).
#
# No shell and no init process: CMD is exec form, so `gateway` is PID 1 and receives SIGTERM
# itself. It installs its own SIGTERM/SIGINT handlers (PID 1 gets no default ones) and starts no
# child processes except its own `--workers`, which it waits for: no zombies to reap.

# Builder and runtime must share the base: the virtualenv's python links to the base's.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# The lock first, in a layer of its own: a code change does not reinstall the dependencies.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md gateway.yaml ./
COPY gateway ./gateway
# Dependencies come from the lock alone; pip compiles the .pyc files at install, so the
# runtime never needs to write them (read-only root filesystem).
RUN pip install --no-cache-dir --no-deps . \
    && gateway --version


FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="An OpenAI-compatible LLM gateway: one /v1/chat/completions in front of every provider." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=builder /opt/venv /opt/venv
COPY deploy/gateway.yaml /etc/gateway/gateway.yaml

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM

# No curl in the image: the standard library asks /healthz on loopback (http.client ignores
# HTTP_PROXY, which would otherwise catch 127.0.0.1). The port is the config's
# ${GATEWAY_LISTEN_PORT:-8080}, so both move together.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client as h, os; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('GATEWAY_LISTEN_PORT', '8080')), timeout=2); c.request('GET', '/healthz'); raise SystemExit(c.getresponse().status != 200)"]

CMD ["gateway", "serve", "--host", "0.0.0.0"]
