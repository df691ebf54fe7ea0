"""The artifact kinds' registry, every test parametrised over it: a kind registered is a kind
tested (suffix lookup, companions moved and copied together, metadata written and read back
through its runtime). A test skips only when the kind's runtime package is not installed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from edgeprune.artifacts import kinds
from edgeprune.artifacts.export import export_artifact
from edgeprune.artifacts.kinds import (
    KINDS,
    ArtifactKind,
    copy_together,
    find_kind,
    kind_of,
    move_together,
    register,
    resolve_kind,
)
from edgeprune.errors import UsageError

ALL = list(KINDS.values())
IDS = [k.name for k in ALL]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def needs_runtime(kind: ArtifactKind) -> None:
    """Skip, saying why, when the kind cannot run here (its package, or a GPU it needs)."""
    if kind.package and importlib.util.find_spec(kind.package) is None:
        pytest.skip(f"{kind.package} is not installed: {kind.name} artifacts cannot be made here")
    if kind.needs_gpu and not torch.cuda.is_available():
        pytest.skip(f"{kind.name} artifacts are built on a GPU and this host has none")


def fake_artifact(kind: ArtifactKind, path, tag: bytes) -> None:
    for i, f in enumerate(kind.files(path)):
        f.write_bytes(tag + bytes([i]))


@pytest.mark.parametrize("kind", ALL, ids=IDS)
def test_suffix_lookup_round_trips(kind, tmp_path):
    found = kind_of(tmp_path / f"m{kind.suffix}")
    assert found.suffix == kind.suffix
    # variants sharing a suffix (openvino-fp16) are read, run and moved exactly like the base kind
    assert (found.module, found.companions, found.magic) == (kind.module, kind.companions, kind.magic)
    assert resolve_kind(kind.name) is kind
    assert all(resolve_kind(a) is kind for a in kind.aliases)
    # by name: a companion's suffix may have two dots (TensorRT's .plan.json sidecar)
    assert [f.name for f in kind.files(tmp_path / f"m{kind.suffix}")] == [f"m{s}" for s in (*kind.companions, kind.suffix)]


@pytest.mark.parametrize("kind", ALL, ids=IDS)
def test_each_kind_has_a_usable_tolerance(kind):
    atol, rtol = kind.tolerance
    assert 0 < atol < 1 and 0 < rtol < 1


@pytest.mark.parametrize("name", ["m.tflite", "model", "m.ONNX2", "weights.bin"])
def test_unknown_suffix_is_one_usage_error(tmp_path, name):
    assert find_kind(tmp_path / name) is None
    with pytest.raises(UsageError, match=r"unknown artifact kind .*known suffixes: \.onnx \(onnx\)") as info:
        kind_of(tmp_path / name)
    assert "\n" not in str(info.value)


def test_magic_bytes_name_the_kind_whatever_the_file_is_called(tmp_path):
    ort = KINDS["ort"]
    offset, magic = ort.magic
    f = tmp_path / "mobile.onnx"
    f.write_bytes(b"\0" * offset + magic + b"rest")
    assert kind_of(f) is ort
    (tmp_path / "plain.onnx").write_bytes(b"not a flatbuffer")
    assert kind_of(tmp_path / "plain.onnx") is KINDS["onnx"]


@pytest.mark.parametrize("kind", ALL, ids=IDS)
def test_companions_are_moved_together(kind, tmp_path):
    src, dest = tmp_path / "work" / f"m{kind.suffix}", tmp_path / f"out{kind.suffix}"
    src.parent.mkdir()
    fake_artifact(kind, dest, b"old")
    fake_artifact(kind, src, b"new")
    assert move_together(src, dest, kind) == dest
    assert [f.read_bytes() for f in kind.files(dest)] == [b"new" + bytes([i]) for i in range(len(kind.files(dest)))]
    assert list(src.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ALL, ids=IDS)
def test_companions_are_copied_together(kind, tmp_path):
    src, dest = tmp_path / f"m{kind.suffix}", tmp_path / "copies" / f"m.frozen{kind.suffix}"
    fake_artifact(kind, src, b"art")
    copy_together(src, dest, kind)
    assert [f.read_bytes() for f in kind.files(dest)] == [f.read_bytes() for f in kind.files(src)]
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(f.name for f in kind.files(dest))


@pytest.mark.parametrize("kind", [k for k in ALL if k.companions], ids=[k.name for k in ALL if k.companions])
def test_a_missing_companion_is_refused_before_anything_is_copied(kind, tmp_path):
    src, dest = tmp_path / f"m{kind.suffix}", tmp_path / "copies" / f"m{kind.suffix}"
    src.write_bytes(b"graph")
    with pytest.raises(UsageError, match=f"needs its {kind.companions[0]} beside it"):
        copy_together(src, dest, kind)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ALL, ids=IDS)
def test_metadata_round_trips(kind, tmp_path):
    path = tmp_path / f"m{kind.suffix}"
    if kind.module is None:  # registered for its name and suffix, not made yet
        with pytest.raises(UsageError, match=f"export kind {kind.name} is not implemented yet"):
            export_artifact(tiny_model(), kind.name, path, (1, 3, 8, 8))
        assert list(tmp_path.iterdir()) == []
        return
    needs_runtime(kind)
    res = export_artifact(tiny_model(), kind.name, path, (1, 3, 8, 8), metadata={"budget_ms": 1.5, "model": "tiny"})
    assert res.ok and res.kind == kind.name and res.max_abs_diff <= kind.tolerance[0]
    assert res.size_bytes == kind.size_bytes(path)
    got = kind_of(path).read_metadata(path)
    assert got["budget_ms"] == "1.5" and got["model"] == "tiny" and got["edgeprune_version"]
    if not hasattr(importlib.import_module(kind.module), "write_metadata"):
        with pytest.raises(UsageError, match="cannot be edited in place"):
            kind.write_metadata(path, {"round": 2})
        return
    kind.write_metadata(path, {"round": 2, "widths": {"g0": 4}})
    got = kinds.read_metadata(path)
    assert got["round"] == "2" and got["widths"] == '{"g0": 4}' and got["model"] == "tiny"
    kind.check(path)  # still a whole, valid artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in kind.files(path))


def test_a_new_kind_is_one_registry_line(tmp_path, monkeypatch):
    """Registered with an existing implementation under its own suffix, a kind exports,
    validates and reads back like a built-in one."""
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    monkeypatch.setattr(kinds, "_BY_SUFFIX", dict(kinds._BY_SUFFIX))
    register(ArtifactKind("onnx-copy", ".onnx2", ("onnx2",), False, "onnxruntime", None, "ONNX, renamed",
                          module="edgeprune.artifacts.kind_onnx"))
    res = export_artifact(tiny_model(), "onnx2", tmp_path / "m.onnx2", (1, 3, 8, 8), metadata={"k": "v"})
    assert res.kind == "onnx-copy" and kind_of(res.path).name == "onnx-copy"
    assert kinds.read_metadata(res.path)["k"] == "v"


@pytest.mark.parametrize("clash", [
    ArtifactKind("onnx", ".onnx9", (), False, None, None, "a second onnx"),
    ArtifactKind("other", ".other", ("ir",), False, None, None, "an alias taken"),
    ArtifactKind("xml2", ".xml", (), False, None, None, "the IR's suffix, read differently"),
])
def test_register_refuses_clashes(clash, monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    monkeypatch.setattr(kinds, "_BY_SUFFIX", dict(kinds._BY_SUFFIX))
    with pytest.raises(ValueError, match="artifact kind"):
        register(clash)


MADE = [k for k in ALL if k.module and k.package]  # implemented kinds that need a package


@pytest.mark.parametrize("kind", MADE, ids=[k.name for k in MADE])
def test_missing_package_is_the_install_hint(kind, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind.package else real(name, *a))
    with pytest.raises(UsageError, match=f"{kind.package} is not installed for export format {kind.name}"):
        export_artifact(tiny_model(), kind.name, tmp_path / f"m{kind.suffix}", (1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_the_registry_imports_no_runtime():
    code = ("import sys, edgeprune, edgeprune.artifacts.kinds as k; k.kind_of('m.xml'); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'tensorrt', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
