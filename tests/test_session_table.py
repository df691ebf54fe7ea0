"""Where a stored latency table is used, refused, or measured again."""
from __future__ import annotations

import json

import pytest

from edgeprune.errors import UsageError
from edgeprune.latency.profile import ProfileConfig
from edgeprune.session import Session, SessionConfig

QUICK = ProfileConfig(levels=3, runs=2, validate=2, calibrate=6, progress=False)


def open_session(fake_target_file, tmp_path, **kw):
    return Session.open(SessionConfig(model="tiny_resnet", target=str(fake_target_file), input_size=16,
                                      profiles_dir=str(tmp_path / "profiles"), profile=QUICK, **kw))


def _tamper(path):
    d = json.loads(path.read_text())
    d["meta"]["runtime_version"] = "other-9"
    path.write_text(json.dumps(d))


def test_default_table_from_other_conditions_is_measured_again(fake_target_file, tmp_path, capsys):
    s = open_session(fake_target_file, tmp_path)
    path = s.table().path
    _tamper(path)
    table = open_session(fake_target_file, tmp_path).table()
    assert table.meta["runtime_version"] == "fake-1"
    assert "profiling again" in capsys.readouterr().err


def test_explicit_table_from_other_conditions_is_refused(fake_target_file, tmp_path):
    path = open_session(fake_target_file, tmp_path).table().path
    _tamper(path)
    with pytest.raises(UsageError, match="runtime_version"):
        open_session(fake_target_file, tmp_path, table=str(path)).table()
    assert json.loads(path.read_text())["meta"]["runtime_version"] == "other-9"  # left as it was
    table = open_session(fake_target_file, tmp_path, table=str(path), allow_table_mismatch=True).table()
    assert table.meta["runtime_version"] == "other-9"
