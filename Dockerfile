# OpenClaw Router gateway image. One process per container; run N of them behind any load balancer,
# sharing Redis and PostgreSQL (docs/DEPLOYMENT.md). Not built in this repository's CI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1

WORKDIR /app
# The CPU wheels of torch (a training-time dependency): the default index would pull CUDA builds.
COPY pyproject.toml README.md ./
COPY router ./router
COPY service ./service
COPY training ./training
COPY models ./models
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
 && useradd --system --create-home --uid 10001 openclaw  # a home: the ONNX exports and the outcome log's journal (PostgreSQL) live under ~/.cache
USER openclaw

# Keys and URLs come from the environment, never from the image:
#   OPENCLAW_MASTER_KEY, OPENCLAW_GOVERNANCE_DB (else server.db), OPENCLAW_ALERT_WEBHOOK,
#   provider keys named by the config (api_key_env). Mount the catalog config at /config.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["openclaw-router", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--config", "/config/openclaw.yaml"]
