# jitproxy: the proxy only (bring your own config, keys and policies).
#   docker build -t jitproxy .
#   docker run -p 3307:3307 -v $PWD/deploy:/etc/jitproxy jitproxy
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home /var/lib/jitproxy jitproxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir ".[fast]" && rm -rf /src
USER jitproxy
WORKDIR /etc/jitproxy
EXPOSE 3307
ENTRYPOINT ["jitproxy"]
CMD ["serve", "--config", "/etc/jitproxy/config.yaml"]
