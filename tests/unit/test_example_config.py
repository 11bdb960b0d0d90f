"""retention.example.toml stays valid and documents every key the settings accept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from gc_daemon.config import Rule, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "retention.example.toml"


def test_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GC_DAEMON_CONFIG", raising=False)
    settings = load_settings(str(EXAMPLE))
    assert settings.gc.container == "registry" and len(settings.retention.rules) == 2


def test_example_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    for group, field in Settings.model_fields.items():
        assert f"[{group}]" in text, group
        annotation = field.annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        for key in annotation.model_fields:
            pattern = r"^\[\[retention\.rules\]\]" if key == "rules" else rf"^#? ?{key} = "
            assert re.search(pattern, text, re.M), f"{group}.{key} is not documented"
    for key in Rule.model_fields:
        assert re.search(rf"^{key} = ", text, re.M), f"retention.rules.{key} is not documented"
