"""The alert rules: valid (`promtool check rules`), documented, and unit-tested by
`promtool test rules` with a case where each alert fires and one where it stays quiet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "rules" / "kafka-pipeline.rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "tests" / "kafka-pipeline.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    return found


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_every_alert_has_summary_description_and_severity() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no case where it stays quiet"


def test_promtool_test_rules() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: a rule that never fires is reported."""
    broken = yaml.safe_load(RULES.read_text())
    for rule in broken["groups"][0]["rules"]:
        if rule["alert"] == "KafkaPipelineApiBreakerOpen":
            rule["expr"] = "max by (instance) (claimx_api_breaker_open) == 2"
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(broken))
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool(), "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "KafkaPipelineApiBreakerOpen" in result.stdout + result.stderr
