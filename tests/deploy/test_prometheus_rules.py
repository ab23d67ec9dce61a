"""deploy/prometheus/rules.yml: promtool accepts it, its unit tests pass, every alert is
tested firing and not firing, and the alerts read only the recording-rule layer.

promtool comes from Debian's `prometheus` package; scripts/bootstrap.sh --dev (run by
scripts/test.sh) installs it with apt-get. Without it these tests fail, unless
POTATO_PROMTOOL_OPTIONAL=1 says a machine may go without (then they skip).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.promql import (
    ROOT,
    RULE_TESTS,
    RULES,
    alerts,
    is_recording_rule,
    metric_names,
    recorded_names,
    rules,
)

SEVERITIES = {"page", "ticket"}


def promtool() -> str:
    """The promtool binary; fails (or skips where it is optional) when missing."""
    found = shutil.which("promtool")
    if found is None:
        reason = ("promtool is missing: scripts/bootstrap.sh --dev installs it "
                  "(apt-get install prometheus)")
        if os.environ.get("POTATO_PROMTOOL_OPTIONAL") == "1":
            pytest.skip(reason + "; POTATO_PROMTOOL_OPTIONAL=1")
        pytest.fail(reason + " (POTATO_PROMTOOL_OPTIONAL=1 skips these tests)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS.glob("*.yml"))


def test_promtool_check_rules() -> None:
    done = run_promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(list(rules()))} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    files = [str(p.relative_to(ROOT)) for p in rule_test_files()]
    assert files
    done = run_promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_alerts_read_only_recording_rules_that_exist() -> None:
    defined = recorded_names()
    for alert in alerts():
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        raw = {n for n in names if not is_recording_rule(n)}
        assert raw == set(), f"{alert['alert']} reads exported series directly: {raw}"
        assert names <= defined, f"{alert['alert']}: undefined {names - defined}"


def test_every_recording_rule_reads_names_defined_before_it() -> None:
    """A recording rule may use another only if an earlier rule (in evaluation order)
    records it, so one evaluation never reads the previous round's value."""
    seen: set[str] = set()
    for rule in rules():
        used = {n for n in metric_names(rule["expr"]) if is_recording_rule(n)}
        assert used <= seen, f"{rule.get('record') or rule['alert']}: {used - seen}"
        if "record" in rule:
            assert re.fullmatch(r"potato_runs:[a-z0-9_]+:[a-z0-9_]+", rule["record"])
            seen.add(rule["record"])


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+?)\s*$", doc.read_text(), re.M)}


def test_every_alert_says_how_bad_and_where_its_runbook_is() -> None:
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        ann = alert["annotations"]
        assert ann["summary"] and ann["description"], name
        path, _, anchor = ann["runbook_url"].partition("#")
        assert anchor in _anchors(ROOT / path), f"{name}: no heading #{anchor} in {path}"
        # docs/observability.md explains every alert under a heading of its name.
        assert name.lower() in _anchors(ROOT / "docs" / "observability.md"), name


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (le, operation) (rate(potato_runs_operation_duration_seconds_bucket'
     '{kind="write", le="0.05"}[$__rate_interval]))',
     {"potato_runs_operation_duration_seconds_bucket"}),
    ("(increase(x_total[1h]) and x_total offset 1h) or on (a) group_left(b) y * 1e3",
     {"x_total", "y"}),
    ('potato_runs:slo:ratio > (14.4 * 0.001) AND vector(0) unless z{__name__!="a b"}',
     {"potato_runs:slo:ratio", "z"}),
    ('label_replace(up{job=~"a|b"}, "dst", "$1", "src", "(.*)")', {"up"}),
    ("histogram_quantile(0.95, sum(rate(h_bucket[5m])) by (le)) @ end()", {"h_bucket"}),
])
def test_metric_name_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
