"""The docs keep up with the code: every setting is in docs/configuration.md, every record
field in docs/record.md."""

import dataclasses
import re
from pathlib import Path

import pytest

from capture import CaptureRecord, Request, Response

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
RECORD_DOC = (ROOT / "docs" / "record.md").read_text()

# A setting is a string constant in UPPER_CASE read from the environment by these modules.
SETTING_SOURCES = ["proxy/settings.py", "sinks/settings.py", "sinks/__main__.py",
                   "sinks/lake.py", "db/migrate.py", "stack/pipeline.py", "apps/app_a.py",
                   "apps/app_b.py"]
SETTING = re.compile(
    r'"((?:PROXY|KAFKA|CAPTURE|APP_B|SINK|DLQ|TIMESCALE|S3|LAKE|RUN)_[A-Z0-9_]+|DATABASE_URL'
    r'|LOG_LEVEL)"')


def settings_in_code() -> set[str]:
    names = set()
    for source in SETTING_SOURCES:
        names |= set(SETTING.findall((ROOT / source).read_text()))
    return names


def test_settings_are_found():
    assert {"PROXY_ROUTES", "CAPTURE_BODY_MAX_BYTES", "APP_B_URL"} <= settings_in_code()


@pytest.mark.parametrize("name", sorted(settings_in_code()))
def test_every_setting_is_in_the_configuration_table(name):
    assert re.search(rf"^\| `{name}` \|", CONFIGURATION, re.MULTILINE), (
        f"{name} is not in docs/configuration.md")


@pytest.mark.parametrize(
    "field", [f.name for cls in (CaptureRecord, Request, Response)
              for f in dataclasses.fields(cls)]
)
def test_every_record_field_is_documented(field):
    assert f"`{field}`" in RECORD_DOC
