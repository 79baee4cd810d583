"""A real Prometheus server scrapes the exporter; its answers equal what the workload did.

Also loads the documented alert rules into that server and runs every dashboard query
against it, so the PromQL in docs/ is checked by the real query engine, not by eye.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, put_objects
from tests.metrics.helpers import free_port, fs_for, tier_of, wait_until
from tiercache.metrics import serve

SIZE = 70_000
DOCS = Path(__file__).resolve().parents[2] / "docs"


class Prometheus:
    """A Prometheus server on a free loopback port with its own data directory."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        return list(reply["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(name, "") for name in labels): float(r["value"][1])
            for r in self.query(expr)
        }


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the Debian package 'prometheus' is not installed (.ci/run installs it)")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        shutil.copy(DOCS / "tiercache-alerts.yml", tmp_path / "tiercache-alerts.yml")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [tiercache-alerts.yml]\n"
            "scrape_configs:\n  - job_name: tiercache\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        log = tmp_path / "prometheus.log"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        started.append(server)

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()}"
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(ready, 60, "prometheus to be ready")
        return server

    yield start
    for server in started:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def test_prometheus_sees_the_workloads_hits_and_misses(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, prometheus_for: Any
) -> None:
    objs = {f"d/x{i}": os.urandom(SIZE) for i in range(7)}
    put_objects(s3_server, bucket, objs)
    # RAM holds 3 objects; promotion off so placement stays what the reads made it.
    fs = fs_for(cache_dirs, s3_server, ram=3 * SIZE + 100, promotion={"hits": 1000})
    # Phase 1: 5 misses, then x0, x1 hit on SSD and x2..x4 in RAM.
    for i in range(5):
        fs.cat_file(f"{bucket}/d/x{i}")
    fs.cache.engine.wait_idle()  # x0, x1 have moved down to SSD
    assert [tier_of(fs, bucket, f"d/x{i}") for i in range(5)] == [1, 1, 0, 0, 0]
    for i in range(5):
        fs.cat_file(f"{bucket}/d/x{i}")

    with serve(fs.cache.config, port=0) as exporter:
        prom = prometheus_for(f"127.0.0.1:{exporter.port}")
        wait_until(
            lambda: prom.scalar("sum(tiercache_requests_total)") == 10,
            60,
            "the first scrape of the exporter",
        )
        assert prom.by("tiercache_requests_total", "tier", "result") == {
            ("ram", "hit"): 3,
            ("ssd", "hit"): 2,
            ("ssd", "miss"): 5,
        }
        assert prom.scalar(
            'sum(tiercache_requests_total{result="hit"}) / sum(tiercache_requests_total)'
        ) == pytest.approx(0.5)
        per_tier = prom.by(
            'sum by (tier) (tiercache_requests_total{result="hit"})'
            " / sum by (tier) (tiercache_tier_lookups_total)",
            "tier",
        )
        assert per_tier == {("ram",): pytest.approx(3 / 10), ("ssd",): pytest.approx(2 / 7)}
        assert prom.scalar('tiercache_bytes_read_total{tier="origin"}') == 5 * SIZE
        assert prom.scalar('tiercache_bytes_read_total{tier="ram"}') == 3 * SIZE
        assert prom.scalar("up") == 1

        # Phase 2, while Prometheus watches: 6 RAM hits and 2 new misses (x5, x6).
        for _ in range(2):
            for i in (2, 3, 4):
                fs.cat_file(f"{bucket}/d/x{i}")
        for i in (5, 6):
            fs.cat_file(f"{bucket}/d/x{i}")
        wait_until(
            lambda: prom.scalar("sum(tiercache_requests_total)") == 18, 60, "a scrape after phase 2"
        )
        assert prom.scalar('sum(tiercache_requests_total{result="miss"})') == 7

        # The documented, rate()-based queries: every sample in the window came from one
        # target at the same instants, so the ratios of rates are exactly phase 2's ratios.
        queries = dashboard_queries()
        (overall,) = queries["Hit ratio (overall)"]
        assert prom.scalar(overall) == pytest.approx(6 / 8)
        (per_tier_rate,) = queries["Hit ratio per tier"]
        assert prom.by(per_tier_rate, "tier") == {
            ("ram",): pytest.approx(6 / 8),
            ("ssd",): pytest.approx(0.0),
        }
        (share,) = queries["Requests answered by each tier"]
        assert prom.by(share, "tier") == {
            ("ram",): pytest.approx(6 / 8),
            ("ssd",): pytest.approx(0.0),
        }
        (origin_rate,) = queries["Origin bytes/s"]
        assert (prom.scalar(origin_rate) or 0) > 0
        (wait_share,) = queries["Data-wait share of wall time"]
        assert 0 < (prom.scalar(wait_share) or 0) < 1
        # Every panel's PromQL is accepted by the real query engine.
        for exprs in queries.values():
            for expr in exprs:
                prom.query(expr)  # asserts status == "success"

        # The documented alert rules load and evaluate cleanly.
        def rules_healthy() -> list[dict[str, Any]] | None:
            groups = prom.get("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules = wait_until(rules_healthy, 60, "the alert rules to evaluate")
        assert len(rules) == 9

        # The write tier: a file written through the cache, uploaded, counted node-wide.
        fs.pipe_file(f"{bucket}/w/written", b"w" * 1000)
        assert fs.sync(timeout=60) == []
        wait_until(
            lambda: prom.scalar("sum(tiercache_uploaded_bytes_total)") == 1000,
            60,
            "a scrape after an upload",
        )
        assert prom.scalar("sum(tiercache_upload_pending_bytes)") == 0


def test_docs_show_the_dashboards_queries() -> None:
    """monitoring.md documents exactly the PromQL the dashboard runs."""
    text = (DOCS / "monitoring.md").read_text()
    for title, exprs in dashboard_queries().items():
        for expr in exprs:
            assert expr in text, f"panel {title!r}: {expr} is not in docs/monitoring.md"


def test_dashboard_is_importable_and_has_the_key_panels() -> None:
    """What Grafana's import needs: a data-source input every query uses, unique panel ids,
    targets with refIds and PromQL, and the panels operators look at first."""
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    (source,) = dashboard["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in ("stat", "timeseries")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${" + source["name"] + "}"
            assert target["refId"] and "tiercache_" in target["expr"]
    titles = set(dashboard_queries())
    assert {
        "Hit ratio (overall)",
        "Hit ratio per tier",
        "Origin bytes/s",
        "Data-wait share of wall time",
        "Bytes/s by source",
        "Evictions/s",
    } <= titles
