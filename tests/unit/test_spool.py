"""proxy/spool.py on real files: order, the cap, restarts, orphans of workers that are gone."""

from __future__ import annotations

import pytest

from proxy.spool import Spool, SpoolFull, SpoolUnusable, adoptable, spool_file


def items(n: int, start: int = 0, size: int = 100) -> list[tuple[bytes, bytes, float]]:
    return [(b"k", str(i).encode().ljust(size, b"."), float(i)) for i in range(start, start + n)]


def numbers(rows) -> list[int]:
    return [int(value.rstrip(b".")) for _, _, value in rows]


async def test_rows_come_back_in_the_order_captured_and_go_once_deleted(tmp_path):
    spool = Spool(tmp_path, 0, 1, 1 << 20)
    assert spool.open() == 0
    assert await spool.append(items(5, start=10)) == 5
    assert await spool.append(items(5, start=0)) == 5  # failed in flight: older, goes first
    rows = await spool.read(1 << 20)
    assert numbers(rows) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert (spool.records, spool.bytes) == (10, 10 * 101)
    first = rows[:3]
    await spool.delete([r[0] for r in first], 3 * 101)
    assert numbers(await spool.read(1 << 20)) == [3, 4, 10, 11, 12, 13, 14]
    assert numbers(await spool.read(250)) == [3, 4]  # up to the size asked, at least one
    assert numbers(await spool.read(1)) == [3]
    await spool.close()


async def test_the_cap_takes_a_prefix_then_refuses(tmp_path):
    spool = Spool(tmp_path, 0, 1, 1000)
    spool.open()
    assert await spool.append(items(15)) == 9  # 9 x 101 bytes fit in 1000
    with pytest.raises(SpoolFull):
        await spool.append(items(1, start=99))
    await spool.close()


async def test_a_restart_finds_what_was_left(tmp_path):
    spool = Spool(tmp_path, 0, 1, 1 << 20)
    spool.open()
    await spool.append(items(7))
    await spool.close()
    again = Spool(tmp_path, 0, 1, 1 << 20)
    assert again.open() == 7
    assert again.bytes == 7 * 101
    assert numbers(await again.read(1 << 20)) == list(range(7))
    await again.close()


async def test_workers_that_are_gone_are_taken_over(tmp_path):
    for worker in range(4):  # a proxy that ran 4 workers
        spool = Spool(tmp_path, worker, 4, 1 << 20)
        spool.open()
        await spool.append(items(3, start=worker * 10))
        await spool.close()
    assert adoptable(tmp_path, 0, 2) == [spool_file(tmp_path, 2)]
    assert adoptable(tmp_path, 1, 2) == [spool_file(tmp_path, 3)]
    # ... restarted with 2: worker 1 takes worker 3's records, worker 0 takes worker 2's.
    one = Spool(tmp_path, 1, 2, 1 << 20)
    assert one.open() == 6
    assert sorted(numbers(await one.read(1 << 20))) == [10, 11, 12, 30, 31, 32]
    assert not spool_file(tmp_path, 3).exists()
    zero = Spool(tmp_path, 0, 2, 1 << 20)
    assert zero.open() == 6
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == [
        "worker-0.sqlite", "worker-1.sqlite"]
    await one.close()
    await zero.close()


def test_a_folder_that_cannot_be_used_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SpoolUnusable, match=r"CAPTURE_SPOOL_DIR .*file"):
        Spool(tmp_path / "file", 0, 1, 1 << 20).open()
