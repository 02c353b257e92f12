# The ingestor as a container: `ingestor run` on a slim Python, as a non-root user, with
# everything it keeps (the JetStream store of the embedded NATS server, the DuckDB
# projection, the event archive) under the one volume /data.
#
#   docker build -t mediaevents-ingestor .
#   docker run -d --name ingestor -p 3857:3857 -v mediaevents-data:/data mediaevents-ingestor
#
# The entrypoint is the documented command `ingestor run` with DATA_DIR=/data and
# HTTP_HOST=0.0.0.0, nothing else: tests/integration/test_container_entrypoint.py reads the
# ENV, ENTRYPOINT and CMD lines below and runs exactly that as a plain process. SIGTERM
# (docker stop) makes it stop taking input, drain, checkpoint and exit 0; give it time to do
# so (`docker stop -t 60`, compose's stop_grace_period).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mediaevents
COPY pyproject.toml README.md ./
COPY ingestor ./ingestor
COPY workbench ./workbench
RUN pip install . \
    && groupadd --system --gid 10001 ingestor \
    && useradd --system --uid 10001 --gid ingestor --home-dir /data --shell /usr/sbin/nologin ingestor \
    && mkdir -p /data \
    && chown ingestor:ingestor /data

USER ingestor
WORKDIR /data
ENV DATA_DIR=/data HTTP_HOST=0.0.0.0
VOLUME /data
EXPOSE 3857

# /readyz: NATS connected, stream reachable, projection writable, consumer lag under
# READY_MAX_LAG. The slim image has no curl; Python's urllib raises on a 503, failing the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('HTTP_PORT', '3857'), timeout=4)"

STOPSIGNAL SIGTERM
ENTRYPOINT ["ingestor"]
CMD ["run"]
