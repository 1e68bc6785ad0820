# stocksync's image (docs/operations.md, "The image"): `docker build -t stocksync .`, then for example
#   docker run -p 8000:8000 -e STOCKSYNC_DATABASE_URL=postgresql://… -e STOCKSYNC_NATS_URL=nats://… stocksync
# PostgreSQL and NATS are the operator's: the embedded servers of `scripts/run` (the `embedded` extra) are
# not in it. Every role is health-checked by `stocksync health`, given the roles `serve` was given.
ARG PYTHON_IMAGE=python:3.12-slim

# --- builder: the wheels of stocksync and its dependencies, installed into a virtualenv ------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The client distribution (the wire contract and the clients), which the server depends on.
COPY client ./client
RUN python -m pip wheel --wheel-dir /wheels ./client . \
    && python -m venv /opt/stocksync \
    && /opt/stocksync/bin/pip install --no-index --find-links /wheels stocksync

# --- runtime: the virtualenv alone (no wheels, no build files, no embedded servers) ------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/stocksync/bin:$PATH \
    STOCKSYNC_HTTP_HOST=0.0.0.0 \
    STOCKSYNC_LOG_FORMAT=json
RUN useradd --create-home --uid 10001 stocksync
COPY --from=builder /opt/stocksync /opt/stocksync

USER stocksync
WORKDIR /home/stocksync
EXPOSE 8000 9464
# The API's /health/ready (the database answers); a process run with other roles overrides it with the same
# roles, e.g. `stocksync health --role worker`, which asks its /metrics port (compose.yaml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["stocksync", "health"]
CMD ["stocksync", "serve"]
