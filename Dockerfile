# Small, non-root image running `gateway serve`. Redis and PostgreSQL are external in production
# (GATEWAY_REDIS_URL, GATEWAY_DATABASE_URL); see deploy/ for a compose example.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY lua ./lua
COPY migrations ./migrations
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /install /usr/local
USER gateway
WORKDIR /home/gateway
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_DATA_DIR=/home/gateway/data PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
CMD ["gateway", "serve"]
