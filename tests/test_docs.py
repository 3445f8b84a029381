"""The manual stays true: every setting config.py reads is documented exactly once (one row of
the table in docs/settings.md), and every relative link in README.md and docs/ leads somewhere."""

from __future__ import annotations

import re

import config
from tests.conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
SETTINGS = sorted(
    v
    for k, v in vars(config).items()
    if k.isupper() and isinstance(v, str) and k == v and not k.startswith("SEED_")
)
PREFIXED = (config.ACI_ENV_PREFIX, config.ACI_SECURE_ENV_PREFIX)


def setting_rows() -> dict[str, list[str]]:
    """Setting name -> the documents whose table rows name it in their first cell."""
    found: dict[str, list[str]] = {}
    for path in [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("| `"):
                continue
            first = line.split("|")[1]
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)(?:<NAME>)?`", first):
                found.setdefault(name, []).append(path.name)
    return found


def test_every_setting_is_documented_exactly_once_in_the_settings_table() -> None:
    rows = setting_rows()
    for name in SETTINGS + [p for p in PREFIXED]:
        assert rows.get(name) == ["settings.md"], f"{name}: documented in {rows.get(name)}"


def test_no_documented_setting_is_unknown_to_config() -> None:
    known = set(SETTINGS) | set(PREFIXED)
    unknown = [
        n for n, where in setting_rows().items() if "settings.md" in where and n not in known
    ]
    assert unknown == []


def test_every_relative_link_resolves() -> None:
    broken = []
    for path in [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.name}: {target}")
    assert broken == []


def test_the_readme_is_a_front_door() -> None:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160
