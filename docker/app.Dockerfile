# CPU image: the API (`moderator serve`) and CPU workers (`moderator worker`).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# pdqhash (Meta's PDQ, for hash lists) is built from source: it needs a C++ compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 moderator
WORKDIR /app
COPY pyproject.toml README.md ./
COPY moderator ./moderator
COPY workers ./workers
# CPU wheels of torch keep the image small; the pinned versions come from pyproject.toml.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[opennsfw]"
USER moderator
ENV MODERATOR_DEVICE=cpu MODERATOR_POLICIES='["/app/policies"]'
EXPOSE 8000 9808
CMD ["moderator", "worker"]
