# jitproxy: the proxy only (config, keys and policies are mounted; see docker-compose.yaml and
# docker/README-section.md for a whole deployment with MariaDB and PostgreSQL).
#
# The base image is pinned by digest, and the digest is given at build time: this repository
# carries none it could not check. Look it up once (and again to take Debian's security fixes):
#   docker pull python:3.11-slim-bookworm
#   PYTHON_DIGEST=$(docker inspect --format '{{index .RepoDigests 0}}' python:3.11-slim-bookworm | cut -d@ -f2)
#   docker build --build-arg PYTHON_DIGEST="$PYTHON_DIGEST" -t jitproxy .
# Without it the build stops at the first FROM (an image reference ending in "@").
#
# Python packages come only from requirements.lock (every file's SHA-256, --require-hashes);
# regenerate it with `sh docker/lock.sh` after changing pyproject.toml's dependencies.
#
#   docker run --rm -p 127.0.0.1:3307:3307 -p 127.0.0.1:8443:8443 -v "$PWD/deploy:/etc/jitproxy:ro" jitproxy
ARG PYTHON_DIGEST

# -- build: a virtualenv with the locked dependencies and jitproxy itself -------------------
FROM python:3.11-slim-bookworm@${PYTHON_DIGEST} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
RUN python -m venv /opt/jitproxy
COPY requirements.lock /tmp/requirements.lock
# Wheels only: nothing is compiled, and every file's hash is in the lock.
RUN /opt/jitproxy/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        --requirement /tmp/requirements.lock
COPY pyproject.toml README.md LICENSE /src/
# The runtime package only: jitproxy_demo/ (`jitproxy demo`, the tests' local servers) stays out;
# pyproject's packages.find lists it too, and finds nothing to add here.
COPY proxy /src/proxy
# The project itself: built with the locked setuptools (no build isolation, so nothing unlocked
# is fetched), its dependencies already in place; pip check proves they are complete.
RUN /opt/jitproxy/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/jitproxy/bin/pip check

# -- runtime --------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm@${PYTHON_DIGEST}
LABEL org.opencontainers.image.title="jitproxy" \
      org.opencontainers.image.description="Just-in-time access gateway for MySQL" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 jitproxy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/jitproxy --no-create-home \
        --shell /usr/sbin/nologin jitproxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/jitproxy \
    && install -d -m 0755 /etc/jitproxy
COPY --from=build /opt/jitproxy /opt/jitproxy
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/jitproxy-entrypoint
COPY --chmod=0644 docker/healthcheck.py /usr/local/lib/jitproxy/healthcheck.py
# JITPROXY_API_PORT: the config's api.port, for the healthcheck (docker/jitproxy.yaml: 8443).
ENV PATH=/opt/jitproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JITPROXY_CONFIG=/etc/jitproxy/config.yaml \
    JITPROXY_API_PORT=8443
USER 10001:10001
# A SQLite store (store.path) belongs here, on a volume; the compose deployment uses PostgreSQL.
WORKDIR /var/lib/jitproxy
EXPOSE 3307 8443
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/python3", "-I", "/usr/local/lib/jitproxy/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/jitproxy-entrypoint"]
CMD ["serve"]
