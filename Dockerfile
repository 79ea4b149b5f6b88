# syntax=docker/dockerfile:1
# batch-watchdog: a small image with the daemon in its own virtual environment.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY watchdog/ watchdog/
COPY migrations/ migrations/
COPY config/ config/
# Every distribution at the version the test suite ran with (constraints.txt).
RUN pip install --no-cache-dir -c constraints.txt "/src[postgres]"

FROM python:${PYTHON_VERSION}-slim-bookworm
# Only where the config file is: settings live in that file (a relative SQLite path
# lands in the working directory, the state volume). Nothing here overrides it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WATCHDOG_CONFIG=/etc/batch-watchdog/watchdog.yaml
COPY --from=build /opt/venv /opt/venv
RUN mkdir -p /var/lib/batch-watchdog /etc/batch-watchdog \
    && chown 10001:10001 /var/lib/batch-watchdog
VOLUME ["/var/lib/batch-watchdog"]
WORKDIR /var/lib/batch-watchdog
USER 10001:10001
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["batch-watchdog"]
CMD ["run"]
