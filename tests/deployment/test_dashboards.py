"""Dashboards and alerts that import anywhere: the data source and the label values are variables,
every panel says what it shows, every alert links its runbook entry in the README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "config" / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "config" / "prometheus" / "rules" / "kafka-pipeline.rules.yml"
README = ROOT / "README.md"
BUILTIN = {"__rate_interval", "__interval", "__range"}


def board_problems(board: dict[str, Any]) -> list[str]:
    """What keeps a dashboard from importing into another Grafana, or leaves a panel unexplained."""
    found = []
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables.get("datasource")
    if source is None or source["type"] != "datasource" or source["query"] != "prometheus":
        found.append("no Prometheus data source variable")
    if "job" not in variables:
        found.append("no job variable")
    queries = [(v["name"], v["query"]["query"], v["datasource"]) for v in variables.values() if v["type"] == "query"]
    for panel in board["panels"]:
        if not (panel.get("description") or "").strip():
            found.append(f"panel {panel['title']!r} has no description")
        queries += [(panel["title"], t["expr"], t.get("datasource", panel["datasource"])) for t in panel["targets"]]
        queries.append((panel["title"], "", panel["datasource"]))
    for where, expr, datasource in queries:
        if datasource.get("uid") != "${datasource}":
            found.append(f"{where}: data source {datasource} is not the variable")
        if re.search(r"\b(job|component)\s*=\s*\"", expr):
            found.append(f"{where}: hard-coded job/component selector in {expr}")
        for name in re.findall(r"\$(\w+)", expr):
            if name not in variables and name not in BUILTIN:
                found.append(f"{where}: ${name} is not a variable of the board")
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_imports_anywhere_and_describes_every_panel(path: Path) -> None:
    assert board_problems(json.loads(path.read_text())) == []


def test_the_check_catches_what_breaks_an_import() -> None:
    board = json.loads(DASHBOARDS[0].read_text())
    board["panels"][0]["description"] = ""
    board["panels"][1]["targets"][0]["expr"] = 'up{job="kafka-pipeline"}'
    board["panels"][2]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    board["templating"]["list"] = [v for v in board["templating"]["list"] if v["name"] != "datasource"]
    problems = board_problems(board)
    assert "no Prometheus data source variable" in problems
    assert any("has no description" in p for p in problems) and any("hard-coded" in p for p in problems)
    assert any("is not the variable" in p for p in problems)


def test_every_alert_links_its_runbook_entry_in_the_readme() -> None:
    alerts = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]
    readme = README.read_text()
    runbook = readme[readme.index("\n## Runbook\n"):]
    runbook = runbook[:runbook.index("\n## ", 1)]
    entries = dict(re.findall(r"\n### (\w+)\n(.*?)(?=\n### |\Z)", runbook, re.S))
    assert len(alerts) == len(entries) > 10
    for rule in alerts:
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"README.md#{name.lower()}", name  # GitHub's anchor of the heading
        text = " ".join(entries[name].split())
        assert all(part in text for part in ("**Means:**", "**Check:** 1.", " 2. ", " 3. ", "**Fix:**")), name
