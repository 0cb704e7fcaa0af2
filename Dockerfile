# The syndication server for a real deployment; docker-compose.yml runs it with its Redis.
# The image has no redis-server: it expects REDIS_URL (docker-compose.yml sets it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them. The install is editable on
# purpose: the server reads schemas/ (and later feeds/) next to the server/ package, and those are
# not part of a built wheel.
COPY pyproject.toml README.md ./
COPY server/__init__.py server/__init__.py
RUN pip install --editable .

COPY . .
RUN python -m compileall -q server \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin syndicate \
    && install -d -o syndicate -g syndicate -m 0700 /var/lib/syndicate

USER syndicate

ENV SYNDICATE_HOST=0.0.0.0 \
    SYNDICATE_PORT=8080 \
    SYNDICATE_DATA_DIR=/var/lib/syndicate

EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SYNDICATE_PORT', '8080'), timeout=2)"

CMD ["syndicate", "serve"]
