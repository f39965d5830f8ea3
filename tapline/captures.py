"""A selection of captures, read one record at a time: what `tapline export` works on.

From the lake: the objects of a `Scope` (date, hour, IP), listed under its prefix and read
whole, one object at a time (a few fetched ahead), each record kept as the bytes the lake
holds. A `where` clause is DuckDB SQL on the view `captures` (tapline/lake.py): it is run once
for the ids it selects, and the objects are then read for those records. Nothing holds more
than a few objects and the set of selected ids, so a day of traffic streams.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from tapline import lake
from tapline.lake import LakeError, LakeSettings, Scope


class NoCaptures(LakeError):
    """The selection holds no capture."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which captures: a lake scope, an optional DuckDB condition, at most `limit` of them."""

    scope: Scope = field(default_factory=Scope)
    where: str | None = None
    limit: int | None = None


def _key_order(key: str) -> tuple:
    """Objects in the order the sink wrote them: by prefix, then partition and first offset
    as numbers (`-0-100` after `-0-99`)."""
    prefix, _, name = key.rpartition("/")
    match = re.search(r"-(\d+)-(\d+)\.jsonl\.gz$", name)
    numbers = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    return prefix, name[:match.start()] if match else name, numbers


def selected_ids(settings: LakeSettings, selection: Selection) -> set[str] | None:
    """The ids `selection.where` picks (None when it has no condition); BadQuery for SQL
    DuckDB refuses."""
    if selection.where is None:
        return None
    result = lake.query(settings, f"SELECT id FROM captures WHERE ({selection.where})",
                        selection.scope)
    return {row[0] for row in result.rows}


def lake_records(settings: LakeSettings, selection: Selection,
                 ahead: int = 4) -> Iterator[bytes]:
    """The selection's records, as stored, object by object; LakeError subclasses for a lake
    that cannot be read or a bad condition."""
    ids = selected_ids(settings, selection)
    entries = sorted(lake.list_objects(settings, selection.scope), key=lambda e: _key_order(e.key))
    if ids is not None and not ids:
        return
    fs = settings.filesystem(asynchronous=False)
    bucket = settings.bucket

    def fetch(key: str) -> bytes:
        try:
            return gzip.decompress(fs.cat_file(f"{bucket}/{key}"))
        except (OSError, EOFError, ValueError) as e:
            raise lake.LakeUnreachable(f"S3 at {settings.endpoint_url or 'AWS'}: cannot read "
                                       f"{key}: {e}") from None

    given = 0
    with ThreadPoolExecutor(ahead) as pool:
        pending = [pool.submit(fetch, e.key) for e in entries[:ahead]]
        index = len(pending)
        while pending:
            data = pending.pop(0).result()
            if index < len(entries):
                pending.append(pool.submit(fetch, entries[index].key))
                index += 1
            for line in data.split(b"\n"):
                if not line:
                    continue
                if ids is not None and _record_id(line) not in ids:
                    continue
                yield line
                given += 1
                if selection.limit is not None and given >= selection.limit:
                    for future in pending:
                        future.cancel()
                    return


_ID = re.compile(rb'"id":"([^"\\]*)"')


def _record_id(line: bytes) -> str | None:
    """A record's id, without decoding it all when it is the first key (as the proxy writes
    records); None when the line holds none."""
    match = _ID.match(line, 1) if line.startswith(b'{"id":"') else None
    if match:
        return match.group(1).decode()
    try:
        found = orjson.loads(line).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None
