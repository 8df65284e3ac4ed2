# CPU image for the API and CPU workers: `dnnq api` / `dnnq worker` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DNNQ_DATA_DIR=/data

# The sources are built in /src and removed: run from there, a ./dnnq folder would hide the
# installed dnnq package (python -m dnnq.workers puts the working directory first on sys.path).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY workers ./workers
COPY service ./service
COPY dnnq ./dnnq
RUN pip install . \
    && cd / && rm -rf /src \
    && useradd --create-home --uid 10001 dnnq \
    && mkdir -p /data && chown dnnq:dnnq /data

USER dnnq
WORKDIR /home/dnnq
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["dnnq"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
