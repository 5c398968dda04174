"""The deployment files (Dockerfile, docker-compose.yaml, docker/, requirements.lock), checked
without a Docker engine: linters, the Compose Specification's schema, the lock against
pyproject.toml, and the entrypoint and healthcheck run against the real `jitproxy`."""
