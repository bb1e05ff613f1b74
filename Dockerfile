# Small, non-root image running `gateway serve`. Redis and PostgreSQL are external in production
# (GATEWAY_REDIS_URL, GATEWAY_DATABASE_URL); see deploy/ for a compose example with two replicas behind nginx.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY lua ./lua
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-compile --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway \
 && mkdir -p /home/gateway/data && chown gateway:gateway /home/gateway/data
COPY --from=build /install /usr/local
USER gateway
WORKDIR /home/gateway
# The data dir holds this replica's transcript spool and debit journal (and the metrics of its workers): give it a
# volume of its own so that a restart replays what the last run could not write.
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_DATA_DIR=/home/gateway/data PYTHONUNBUFFERED=1
VOLUME ["/home/gateway/data"]
EXPOSE 8080
# SIGTERM: stop accepting, let streams finish (GATEWAY_SHUTDOWN_GRACE_S, 30 s), drain the writer. Give the
# container more than that before SIGKILL (compose: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_PORT', '8080'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
CMD ["gateway", "serve"]
