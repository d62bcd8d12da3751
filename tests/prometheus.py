"""A real Prometheus for the tests (Debian's package `prometheus`, installed with apt-get when
missing and we are root, as scripts/test does), scraping a running stack every second."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from wardgate import devstack

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "observability"


def ensure_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
            check=True,
            env=env,
            capture_output=True,
        )
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"{name} is missing: apt-get install prometheus (bash scripts/test does)")


def start_prometheus(
    workdir: Path, *, wardgate: str, envoy: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Prometheus scraping wardgate's /metrics and Envoy's /stats/prometheus each second, with
    the shipped alert rules loaded; returns the process and its port."""
    binary = ensure_binary("prometheus")
    port = devstack.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(OBSERVABILITY / "prometheus" / "alerts.yml", workdir / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": "wardgate", "static_configs": [{"targets": [wardgate]}]},
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [envoy]}],
            },
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(workdir / "prometheus.log", "ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        devstack.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30)
    except BaseException:
        devstack.stop(proc)
        raise
    return proc, port
