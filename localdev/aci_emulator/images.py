"""Image reference -> local command mapping (the emulator's stand-in for pulling an image).

The file format is documented in the package docstring (`localdev.aci_emulator`). Loading is strict:
a typo in the mapping should fail the emulator's start, not surface later as a puzzling
`InaccessibleImage`.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from localdev.aci_emulator.model import bad_request

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

PullMode = Literal["ok", "fail", "inaccessible"]
PULL_MODES: tuple[PullMode, ...] = ("ok", "fail", "inaccessible")
_RULE_KEYS = frozenset({"match", "command", "cwd", "env", "aliases", "pull", "comment"})


@dataclass(frozen=True)
class ImageRule:
    """How one family of images runs locally."""

    patterns: tuple[str, ...]
    command: tuple[str, ...] = ()
    cwd: Path = REPO_ROOT
    env: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    pull: PullMode = "ok"

    def argv(self, container_command: Sequence[str] | None) -> list[str]:
        """The process argv: the container's `command` replaces the image's command (as in ACI,
        where `command` overrides the entrypoint); then argv[0] goes through `aliases`."""
        argv = list(container_command) if container_command else list(self.command)
        if argv and argv[0] in self.aliases:
            argv[0] = self.aliases[argv[0]]
        return argv


@dataclass(frozen=True)
class ImageMap:
    """The ordered rules of one mapping file; the first rule with a matching pattern wins."""

    rules: tuple[ImageRule, ...]
    source: Path | None = None

    def check(self, group: str, images: Sequence[str], unknown_image: str) -> str | None:
        """Reject inaccessible images now (as ACI does at PUT time); return the pull-failure
        message if an image is to fail asynchronously instead (`unknown_image`: reject |
        pull-failure, for an image no rule matches)."""
        failing = []
        for image in images:
            rule = self.resolve(image)
            if (rule is None and unknown_image == "reject") or (
                rule is not None and rule.pull == "inaccessible"
            ):
                raise bad_request(
                    "InaccessibleImage",
                    f"The image '{image}' in container group '{group}' is not accessible. "
                    "Please check the image and registry credential.",
                )
            if rule is None or rule.pull == "fail":
                failing.append(image)
        if not failing:
            return None
        return (
            f"Failed to pull image(s) {', '.join(repr(i) for i in failing)} for container group "
            f"'{group}'."
        )

    def resolve(self, image: str) -> ImageRule | None:
        """The rule for `image`, trying it as written and, without a tag or digest, with
        `:latest` (Docker's default tag)."""
        candidates = [image]
        last = image.rsplit("/", 1)[-1]
        if ":" not in last and "@" not in image:
            candidates.append(image + ":latest")
        for rule in self.rules:
            for pattern in rule.patterns:
                if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                    return rule
        return None


def _expand(value: str, placeholders: Mapping[str, str]) -> str:
    for key, replacement in placeholders.items():
        value = value.replace("{" + key + "}", replacement)
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings")
    return list(value)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{where} must be an object of strings")
    return dict(value)


def parse_image_map(data: Any, *, base: Path, source: Path | None = None) -> ImageMap:
    """Validate and expand a decoded mapping document (see the package docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError('an image mapping must be an object with an "images" list')
    placeholders = {"python": sys.executable, "repo": str(REPO_ROOT), "here": str(base)}
    rules = []
    for i, raw in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        match = raw.get("match")
        patterns = [match] if isinstance(match, str) else _str_list(match, f"{where}.match")
        if not patterns or not all(patterns):
            raise ValueError(f"{where}.match must name at least one non-empty pattern")
        pull = raw.get("pull", "ok")
        if pull not in PULL_MODES:
            raise ValueError(f"{where}.pull must be one of {', '.join(PULL_MODES)}")
        command = [_expand(c, placeholders) for c in _str_list(raw.get("command", []), where)]
        cwd_raw = raw.get("cwd", "{repo}")
        if not isinstance(cwd_raw, str):
            raise ValueError(f"{where}.cwd must be a string")
        cwd = Path(_expand(cwd_raw, placeholders))
        if not cwd.is_absolute():
            cwd = (base / cwd).resolve()
        env = _str_map(raw.get("env", {}), f"{where}.env")
        aliases = _str_map(raw.get("aliases", {}), f"{where}.aliases")
        rules.append(
            ImageRule(
                patterns=tuple(patterns),
                command=tuple(command),
                cwd=cwd,
                env={k: _expand(v, placeholders) for k, v in env.items()},
                aliases={k: _expand(v, placeholders) for k, v in aliases.items()},
                pull=pull,
            )
        )
    return ImageMap(rules=tuple(rules), source=source)


def load_image_map(path: Path) -> ImageMap:
    """Load a mapping file; relative `cwd` values are relative to the file's folder."""
    path = path.resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read image mapping {path}: {exc}") from exc
    return parse_image_map(data, base=path.parent, source=path)
