# ASVAT: one image for every service. The command picks the service:
#   docker run asvat ingest | worker | api | topics create | replay ... | config
# docker-compose.yml runs the set against a single-node Kafka.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ASVAT_DATA_DIR=/data

# A non-root user that owns only the data directory.
RUN groupadd --system --gid 10001 asvat \
    && useradd --system --uid 10001 --gid asvat --create-home --home-dir /home/asvat \
        --shell /usr/sbin/nologin asvat \
    && mkdir -p /data \
    && chown asvat:asvat /data

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself (see .dockerignore for what stays out), installed editable.
COPY . .
RUN pip install --no-deps -e .

# The domain core compiled with mypyc (asvat/native.py): the compiler and mypy are needed
# only for this step and are removed after it. --required: an image must not ship the
# slower interpreted core by accident (`asvat native status` says which is in use).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install "mypy>=1.10" \
    && asvat native build --required \
    && pip uninstall -y mypy \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

USER asvat
VOLUME ["/data"]
# 8000 API, 8001 ingest, 8002 worker health and metrics.
EXPOSE 8000 8001 8002
ENTRYPOINT ["asvat"]
CMD ["--help"]
