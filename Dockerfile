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
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="batch-watchdog" \
      org.opencontainers.image.description="Guards LLM batch jobs on OpenAI-compatible Batch APIs: polls, judges against YAML policies, cancels." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="README.md in the source tree"
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
# /healthz at the host and port the mounted config names (http.host, http.port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["batch-watchdog", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["batch-watchdog"]
CMD ["run"]
