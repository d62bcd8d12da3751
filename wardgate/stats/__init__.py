"""Statistics for SREs: what Envoy's access log tells wardgate, and what wardgate makes of it.

Envoy streams its access log to wardgate (``als.py``, ``AccessLogService``); each entry
becomes a plain ``Request`` (``records.py``) and goes to the parts that need it
(``sink.py``): per-route Prometheus metrics (``route_metrics.py``), usage metering per user,
API key and route and the rate-limited clients (``usage.py``, flushed to Redis in batches by
``flusher.py``), and the refusal log (``decision_log.py``). ``limited.py`` reports the
rate-limited clients back from Redis; ``tracing.py`` exports OpenTelemetry spans;
``top_view.py`` is ``wardgate top``'s screen. Only ``als.py`` and ``tracing.py`` know
protobuf or gRPC; nothing here knows Redis (``store/usage.py`` does).
"""
