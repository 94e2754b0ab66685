# One image for every alert-history service; the command picks the service:
#   docker run IMAGE serve history      (or gateway, classifier, publisher)
#   docker run IMAGE migrate
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builder: scripts/install.sh, the README's install command (a venv, then
# `pip install .`, whose setup.py generates the gRPC code from protos/).
FROM ${PYTHON_IMAGE} AS builder

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY scripts/install.sh ./scripts/install.sh
COPY protos ./protos
COPY libs ./libs
COPY services ./services
# The README's install command, in its mode for images: not editable, no
# test tools.
RUN scripts/install.sh --image /opt/alert-history \
    && /opt/alert-history/bin/alert-history --help >/dev/null

# Runtime: the venv only, no compilers and no source tree.
FROM ${PYTHON_IMAGE}

# Fixed numeric ids, so that Kubernetes can check runAsNonRoot; the chart
# sets the same ids.
RUN groupadd --system --gid 10001 alert-history \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin alert-history \
    && mkdir -p /var/lib/alert-history \
    && chown 10001:10001 /var/lib/alert-history

COPY --from=builder /opt/alert-history /opt/alert-history

# PYTHONDONTWRITEBYTECODE: pip compiled the bytecode at install time, and the
# chart mounts the root filesystem read-only.
ENV PATH=/opt/alert-history/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/alert-history

WORKDIR /var/lib/alert-history
USER 10001:10001

# Gateway HTTP; gRPC of history, classifier, publisher, recommender; their metrics.
EXPOSE 8080 50051 50052 50053 50054 9101 9102 9103 9104

ENTRYPOINT ["alert-history"]
CMD ["serve", "gateway"]
