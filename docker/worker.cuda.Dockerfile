# GPU worker: CUDA runtime + moderator; one worker process per visible GPU, fp16.
# build-essential and python3.11-dev: pdqhash (Meta's PDQ) builds from source.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && useradd --create-home --uid 10001 moderator
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY moderator ./moderator
COPY workers ./workers
RUN pip install ".[opennsfw]"
USER moderator
ENV MODERATOR_DEVICE=auto MODERATOR_PRECISION=auto MODERATOR_POLICIES='["/app/policies"]'
EXPOSE 9808
CMD ["moderator", "worker"]
