# session-ledger processes (service, broadcaster, projections, edge sidecar): one image,
# the command picks the role (see docker-compose.yml). NATS itself runs from the official image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY projections projections
COPY consumers consumers
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data ledger \
    && mkdir -p /data /keys && chown ledger:ledger /data /keys

USER ledger
VOLUME ["/data", "/keys"]
EXPOSE 8081
CMD ["session-ledger", "--help"]
