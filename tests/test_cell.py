"""benchmark/cell.py: the record round trip, older records, status, and the one identity rule."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cell import (CHECKPOINT_FILE, METRICS_FILE, BadCell, CellRecord, cell_key, cell_status, read_record,
                            setting_of, write_record)

DATA = Path(__file__).parent / "data"
OLDER = sorted(DATA.glob("report_metrics_*.json"))


@pytest.mark.parametrize("path", OLDER, ids=lambda p: p.name)
def test_older_records_read_and_write_back_identically(tmp_path, path):
    raw = json.loads(path.read_text())
    record = read_record(path)
    assert record.to_json() == raw and list(record.to_json()) == list(raw)
    write_record(tmp_path, record)
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == raw
    assert read_record(tmp_path) == record
    assert record.classes == [str(c) for c in raw["data"]["classes"]]
    assert set(record.attack_records) == set(raw["evaluation"]["attack_records"])


def test_fields_of_a_newer_writer_are_kept(tmp_path):
    raw = {**json.loads(OLDER[0].read_text()), "future_field": {"x": 1}}
    assert CellRecord.from_json(raw).to_json() == raw


@pytest.mark.parametrize("change, reason", [({"schema_version": 2}, "schema_version"), ({"status": "running"}, "status"),
                                            ({"data": None}, "data")])
def test_bad_records_say_why(change, reason):
    with pytest.raises(BadCell, match=reason):
        CellRecord.from_json({**json.loads(OLDER[0].read_text()), **change})


def test_status_new_resumable_done(tmp_path):
    cell = tmp_path / json.loads(OLDER[0].read_text())["cell_key"]  # a record is done only in its own folder
    cell.mkdir()
    assert cell_status(cell) == "new"
    (cell / CHECKPOINT_FILE).write_bytes(b"\0")
    assert cell_status(cell) == "resumable"
    with pytest.raises(BadCell, match="unfinished"):
        read_record(cell)
    shutil.copy(OLDER[0], cell / METRICS_FILE)
    assert cell_status(cell) == "done"


def test_cell_key_is_configs_key_and_setting_ignores_only_the_training_seed():
    from benchmark.config import expand_grid, load_profile

    cfg = expand_grid(load_profile("quick"))[0]
    assert cell_key(cfg.resolved()) == cfg.key()
    twin = {**cfg.resolved(), "seed": cfg.seed + 1}
    assert setting_of(twin) == setting_of(cfg.resolved())
    assert setting_of({**cfg.resolved(), "epochs": 99}) != setting_of(cfg.resolved())
