# One image for the worker and the CLI (and later the gateway).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY warmpool ./warmpool
COPY workflows ./workflows
COPY activities ./activities
COPY vastsim ./vastsim
COPY worker.py starter.py ./
RUN pip install --no-cache-dir .
USER nobody
CMD ["python", "worker.py"]
