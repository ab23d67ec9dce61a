"""docs/security.md says what is built: its policy example parses, its refusal example is
the server's message, and its method -> role table is METHOD_ROLES."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from potato_runs.domain.access_policy import METHOD_ROLES, PolicyError, Role, parse_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_the_policy_example_parses() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", section("Access control"), re.S)
    assert len(blocks) == 1
    policy = parse_policy(blocks[0])
    assert policy.admin_token and [i.name for i in policy.identities] == [
        "checkin-app", "reporting", "ops-bastion"]


def test_the_refusal_example_is_the_message() -> None:
    text = section("Access control")
    example = re.search(r"`error: access policy /etc/potato/policy.yaml: (.*?)`", text)
    assert example is not None
    broken = re.findall(r"```yaml\n(.*?)```", text, re.S)[0].replace(
        "roles: [runs.read]\n", "roles: [runs.reader]\n")
    with pytest.raises(PolicyError) as err:
        parse_policy(broken)
    assert str(err.value) == example.group(1)


def test_the_table_is_method_roles() -> None:
    rows = re.findall(r"^\| `(potato\.runs\.[\w.]+)` \| (.*?) \| `([\w.]+)` \|$",
                      section("Access control"), re.M)
    documented = {f"/{service}/{method}": Role(role) for service, methods, role in rows
                  for method in re.findall(r"`(\w+)`", methods)}
    assert documented == dict(METHOD_ROLES)
