"""The monitoring stack of deploy/: Prometheus config and alerts (promtool), the Grafana
dashboard (structure; its PromQL runs against a real Prometheus in
tests/system/test_prometheus.py) and the compose profile that starts both.

promtool comes with Debian's ``prometheus`` package (.ci/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "nnserve.json"
ALERTS = {"NnserveDown", "NnserveNotReady", "NnserveHighErrorRatio", "NnserveHighLatencyP99",
          "NnserveModelLoadFailures", "NnserveNoSuccessfulScan"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (see .ci/run)"
    return subprocess.run([tool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=120)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_config_and_rules_pass_promtool_check():
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)",
                            (PROMETHEUS_DIR / "alerts_test.yml").read_text()))
    assert {rule["alert"] for rule in alert_rules()} == ALERTS == tested


def test_the_scrape_config_reads_the_rules_and_scrapes_nnserve():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "nnserve" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["nnserve:8000"]
    assert all('job="nnserve"' in rule["expr"] for rule in alert_rules())


def test_dashboard_is_a_well_formed_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["type"] in {"timeseries", "stat"}
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            # Only the variables the dashboard defines, and Grafana's rate interval.
            names = set(re.findall(r"\$(\w+)", target["expr"]))
            assert names <= {"__rate_interval", "model", "version"}, target["expr"]
    variables = {var["name"] for var in board["templating"]["list"]}
    assert variables == {"model", "version"}
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("requests", "errors", "latency", "batch size", "by model", "version",
                  "load failures"):
        assert topic in titles, topic


def test_dashboard_panels_show_only_metrics_the_server_exports():
    from prometheus_client.parser import text_string_to_metric_families

    from app import metrics

    # Every family /metrics shows (an application's request metrics included), by name.
    text, _ = metrics.render(metrics.RequestMetrics())
    exported = {family.name for family in text_string_to_metric_families(text.decode())}
    used = set()
    for expr in dashboard_expressions():
        used |= set(re.findall(r"\b(nnserve_[a-z_]+?)(?:_bucket|_sum|_count|_total)?\{", expr))
    assert used
    assert {name.removesuffix("_total") for name in used} <= exported, used - exported


def test_compose_profile_monitoring_runs_prometheus_and_grafana_provisioned():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    monitoring = {name for name, service in services.items()
                  if "monitoring" in service.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    mounted = {}
    for name in monitoring:
        for volume in services[name]["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
                mounted[source] = target
    assert mounted["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounted["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert mounted["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "nnserve.yml").read_text())["providers"][0]
    assert mounted["./deploy/grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
