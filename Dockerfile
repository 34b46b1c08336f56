# Sluice gateway image: `docker compose up` builds and runs it with the policies mounted read-only.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . && useradd --system --uid 10001 sluice \
    && mkdir -p /var/lib/sluice && chown sluice /var/lib/sluice
# Local token store and the audit log (which must be writable, or the gateway does not start).
ENV SLUICE_DATA_DIR=/var/lib/sluice
COPY policies /etc/sluice/policies
USER sluice
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ready')"
CMD ["sluice", "serve", "--host", "0.0.0.0", "--port", "8080", "--policies", "/etc/sluice/policies"]
