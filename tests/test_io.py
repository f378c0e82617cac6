import json

import pytest

from trajectory.io import atomic_open, save_json


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    save_json({"version": 1}, str(path))
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write('{"version": 2, "trunc')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_completed_write_replaces_the_file_with_a_normal_mode(tmp_path):
    path = tmp_path / "sub" / "report.json"
    save_json({"version": 1}, str(path))
    save_json({"version": 2}, str(path))
    assert json.loads(path.read_text()) == {"version": 2}
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's private default
