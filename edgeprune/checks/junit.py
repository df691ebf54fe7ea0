"""JUnit XML, the report format CI systems (GitHub Actions reporters, GitLab, Jenkins) all read.

Standard library only. One ``<testsuite>`` inside ``<testsuites>``; a test case carries at most
one ``<failure>`` (the check ran and the model failed it) or ``<error>`` (the check could not
run), plus ``<system-out>`` with the details. Written atomically.
"""
from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class TestCase:
    name: str
    classname: str
    time_s: float = 0.0
    failure: str | None = None      # one-line message; the details go to ``output``
    error: str | None = None
    output: str = ""

    __test__ = False  # not a pytest test class


def to_xml(cases: list[TestCase], suite: str = "edgeprune") -> str:
    failures = sum(c.failure is not None and c.error is None for c in cases)
    errors = sum(c.error is not None for c in cases)
    total = f"{sum(c.time_s for c in cases):.3f}"
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": str(errors), "time": total}
    root = ET.Element("testsuites", {"name": suite, **counts})
    ts = ET.SubElement(root, "testsuite", {
        "name": suite, **counts, "skipped": "0", "hostname": _clean(socket.gethostname()),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    for c in cases:
        tc = ET.SubElement(ts, "testcase", {"name": _clean(c.name), "classname": _clean(c.classname),
                                            "time": f"{c.time_s:.3f}"})
        if c.error is not None:
            el = ET.SubElement(tc, "error", {"message": _clean(c.error), "type": "error"})
            el.text = _clean(c.error)
        elif c.failure is not None:
            el = ET.SubElement(tc, "failure", {"message": _clean(c.failure), "type": "failure"})
            el.text = _clean(c.failure)
        if c.output:
            ET.SubElement(tc, "system-out").text = _clean(c.output)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(cases: list[TestCase], path: str | os.PathLike, suite: str = "edgeprune") -> Path:
    from edgeprune.artifacts.onnxio import atomic_write
    with atomic_write(path) as tmp:
        tmp.write_text(to_xml(cases, suite), encoding="utf-8")
    return Path(path)


def _clean(text: str) -> str:
    """Text XML 1.0 can hold: control characters other than tab/newline/CR removed."""
    return _INVALID_XML.sub("", str(text))
