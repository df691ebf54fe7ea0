"""Registry of runtimes by name, imported lazily so ``import edgeprune`` never loads a backend.

Third-party runtimes can register through the ``edgeprune.runtime`` entry-point group.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from edgeprune.errors import MissingBackend, UsageError, unknown
from edgeprune.runtime.base import Compiled, NodeTime, Target
from edgeprune.runtime.spec import TargetSpec, load_spec

RUNTIMES: dict[str, str] = {
    "onnxruntime": "edgeprune.runtime.ort:OrtTarget",
    "openvino": "edgeprune.runtime.openvino:OpenVinoTarget",
    "fake": "edgeprune.runtime.fake:FakeTarget",
    "remote": "edgeprune.runtime.remote:RemoteTarget",
    "tensorrt": "edgeprune.runtime.tensorrt:TensorRtTarget",
    "torch": "edgeprune.runtime.torch_aoti:TorchTarget",
}


def runtimes() -> dict[str, str]:
    found = dict(RUNTIMES)
    for ep in entry_points(group="edgeprune.runtime"):
        found.setdefault(ep.name, ep.value)
    return found


def target_class(runtime: str) -> type[Target]:
    table = runtimes()
    if runtime not in table:
        raise unknown("runtime", runtime, table)
    module, _, cls = table[runtime].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_target(spec_or_name: TargetSpec | str) -> Target:
    """A ready Target from a spec, a target name, or a YAML path; a missing runtime package
    raises MissingBackend with the install hint."""
    spec = load_spec(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    try:
        cls = target_class(spec.runtime)
    except UsageError as e:  # name the target whose file holds the unknown runtime
        raise UsageError(f"target {spec.name!r}: {e}") from None
    if not cls.installed():
        raise MissingBackend(cls.package, cls.extra, what=f"target {spec.name!r}")
    return cls(spec)


__all__ = ["Compiled", "NodeTime", "Target", "get_target", "runtimes", "target_class"]
