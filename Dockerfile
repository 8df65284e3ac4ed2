# CPU image for the API and CPU workers: `dnnq api` / `dnnq worker` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DNNQ_DATA_DIR=/data

WORKDIR /app
# Dependencies first so that a source change does not reinstall them.
COPY pyproject.toml README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY dnnq ./dnnq
RUN pip install . \
    && useradd --create-home --uid 10001 dnnq \
    && mkdir -p /data && chown dnnq:dnnq /data

USER dnnq
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["dnnq"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
