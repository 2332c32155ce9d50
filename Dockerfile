# One image for the worker, the gateway and the operator CLI; docker-compose.yml runs it as
#   python worker.py | python -m warmpool.gateway | python starter.py ...
# Settings come from the environment (docs/settings.md). Secrets come from the environment
# too, or from the file store in WARMPOOL_SECRETS_DIR (/secrets, a volume) that
# `starter.py tokens set` writes, so a rotated token needs no restart.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY warmpool ./warmpool
COPY workflows ./workflows
COPY activities ./activities
COPY vastsim ./vastsim
COPY worker.py starter.py ./
COPY deploy/worker_health.py ./deploy/
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin warmpool \
    && mkdir -p /secrets \
    && chown warmpool /secrets \
    && chmod 700 /secrets

USER warmpool
ENV WARMPOOL_SECRETS_DIR=/secrets \
    WARMPOOL_LOG_JSON=true
EXPOSE 3000 9464
CMD ["python", "worker.py"]
