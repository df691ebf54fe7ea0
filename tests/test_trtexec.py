"""`edgeprune profile --from-trtexec`: trtexec's exported files -> a LatencyTable, on every real
file in tests/fixtures/tensorrt (SOURCES.md there says where each comes from)."""
from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from edgeprune.errors import UsageError
from edgeprune.latency.table import LatencyTable
from edgeprune.latency.trtexec import from_trtexec, module_path, onnx_nodes
from edgeprune.latency.trtexec_files import (
    load_layer_graph,
    load_metadata,
    load_profile,
    load_times,
)

# the real files, committed with their sources and licences (fixtures/tensorrt/SOURCES.md): the
# tests run wherever the suite does, never skipped for want of them
FIX = Path(__file__).resolve().parent / "fixtures" / "tensorrt"

R18, MV2, ALEX, QAT = ("rtx3060_resnet18_fp16", "rtx3060_mobilenet_v2_fp16", "rtx3060_alexnet_fp16",
                       "titanrtx_mobilenet_qat_int8")


def f(stem: str, kind: str) -> Path:
    return FIX / f"{stem}.{kind}.json"


def build(stem: str, **kw):
    return from_trtexec(f(stem, "profile"), f(stem, "graph"), **kw)


# the figures: per-layer averages added up, end to end, share of time mapped to ONNX nodes
@pytest.mark.parametrize("stem, e2e_kw, layer_sum, e2e, mapped_pct, spread_max", [
    (R18, "metadata", 0.3635, 0.276855, 97.2, 0.014),
    (MV2, "metadata", 0.4113, 0.232422, 97.8, 0.051),
    (ALEX, "times", 0.5242, 0.495605, 97.8, 0.011),
])
def test_sums_end_to_end_and_calibration(stem, e2e_kw, layer_sum, e2e, mapped_pct, spread_max):
    src = f(stem, "profile.metadata") if e2e_kw == "metadata" else f(stem, "timing")
    r = build(stem, **{e2e_kw: src})
    t, m = r.table, r.table.meta
    assert m["layer_sum_ms"] == pytest.approx(layer_sum, abs=5e-4)
    assert m["e2e_ms"] == pytest.approx(e2e, abs=1e-6)
    assert 100 * m["mapped_ms"] / m["layer_sum_ms"] == pytest.approx(mapped_pct, abs=0.1)
    assert m["mapped_ms"] + m["unmapped_ms"] == pytest.approx(layer_sum, abs=5e-4)
    assert t.scale == pytest.approx(e2e / m["layer_sum_ms"], rel=1e-6) and t.scale < 1  # the profiled run is slower
    assert m["raw_vs_e2e_pct"] == pytest.approx(100 * (layer_sum - e2e) / e2e, abs=0.3)
    assert t.predict(t.groups) == pytest.approx(e2e, rel=1e-4)  # calibrated: full width at the e2e median
    assert m["calibrated"] is True and m["source"] == "trtexec" and m["width_model"] == "work-proportional"
    assert m["configurations"] == 1 and "in-sample" in m["error_basis"]
    assert 0 < t.error.max_abs_pct <= spread_max and t.error.n >= 6


def test_resnet18_and_mobilenet_figures_from_the_issue():
    r18 = build(R18, metadata=f(R18, "profile.metadata")).table.meta
    mv2 = build(MV2, metadata=f(MV2, "profile.metadata")).table.meta
    assert (round(r18["layer_sum_ms"], 3), round(r18["e2e_ms"], 3)) == (0.364, 0.277)
    assert (round(mv2["layer_sum_ms"], 3), round(mv2["e2e_ms"], 3)) == (0.411, 0.232)


def test_alexnet_times_file_gives_the_median_of_its_iterations():
    times = load_times(f(ALEX, "timing"))
    assert len(times) == 6039
    r = build(ALEX, times=f(ALEX, "timing"))
    assert r.e2e.median_ms == pytest.approx(0.495605) and "6039 iterations" in r.e2e.source
    assert r.table.error.n == 6039 and r.table.error.samples == []  # summarised, not copied
    assert r.table.error.within_10pct == 1.0
    # the Myelin GEMMs (`/classifier/classifier_1/Gemm_myl9_2`) map to the classifier's Linear modules
    assert {"classifier.1", "classifier.4", "classifier.6"} <= set(r.table.layers)
    assert sum(r.table.layer_ms({}).values()) > 0.8 * r.table.predict({})


def test_mapping_resnet18_unmapped_is_only_reformats_and_shape_calls():
    r = build(R18)
    unmapped = [l for l in r.layers if l.key is None]
    assert {l.layer_type for l in unmapped} == {"Reformat", "NoOp", "shape_call"}
    assert r.table.overhead_ms == pytest.approx(sum(l.ms for l in unmapped), abs=1e-6)
    fused = next(l for l in r.layers if l.name.startswith("/layer1/layer1.0/conv2/Conv + "))
    assert fused.key == "layer1.0.conv2"
    assert next(l for l in r.layers if l.name == "__myl_MulSumAdd_myl24_1").key == "fc"  # via Metadata


def test_qat_int8_trt8_format_maps_its_convolutions_without_metadata():
    g = load_layer_graph(f(QAT, "graph"))
    assert all(l.metadata is None for l in g.layers)  # the TRT 8 layer-info format
    r = build(QAT)
    convs = [l for l in r.layers if l.layer_type in ("CaskConvolution", "CudaDepthwiseConvolution")]
    assert len(convs) == 53
    assert all(l.key and (l.key.startswith("features.") or l.key == "classifier.1") for l in convs)
    assert {l.name for l in r.layers if l.key is None} >= {"QuantizeLinear_2", "QuantizeLinear_854"}
    m = r.table.meta
    assert m["calibrated"] is False and r.table.scale == 1.0 and "uncalibrated" in m["error_basis"]
    assert r.table.predict({}) == pytest.approx(load_profile(f(QAT, "profile")).sum_average_ms, rel=1e-5)


def test_qat_int8_maps_to_mobilenet_v2_groups():
    r = build(QAT, model="mobilenet_v2")
    assert r.convs_mapped == r.convs_total == 53
    t = r.table
    assert t.predict({g: c // 2 for g, c in t.groups.items()}) < t.predict(t.groups)
    dw = t.layers["features.2.conv.1.0"]  # depthwise: its work is linear in its one group
    (g,) = dw.axes
    assert dw.predict({g: t.groups[g] // 2}) == pytest.approx(dw.predict(t.groups) / 2, rel=1e-4)


@pytest.fixture(scope="module")
def r18_model():
    return build(R18, metadata=f(R18, "profile.metadata"), model="resnet18", input_size=224)


def test_resnet18_model_every_conv_maps_to_a_module_and_group(r18_model):
    r, t = r18_model, r18_model.table
    assert r.convs_total == 21 and r.convs_mapped == 21  # 20 convolutions and the fc
    assert t.meta["input_shape"] == [1, 3, 224, 224] and t.meta["model"] == "resnet18"
    for l in r.layers:
        if l.conv and l.conv not in ("conv1", "fc"):
            assert len(t.layers[l.conv].axes) == 2, l.conv
    assert t.layers["conv1"].axes == ["conv1"]  # the stem reads the fixed 3-channel input
    assert len(t.layers["fc"].axes) == 1  # and the fc writes the fixed 1000 classes
    assert t.layers["maxpool"].axes == ["conv1"]  # pooling: the group of the conv feeding it
    assert t.weights and set(t.weights) == {l.conv for l in r.layers if l.conv}


def test_resnet18_table_predicts_e2e_at_full_width_and_less_when_narrower(r18_model):
    t = r18_model.table
    full = t.predict(t.groups)
    assert full == pytest.approx(0.276855, rel=1e-4)
    preds = [t.predict({g: max(1, round(c * k)) for g, c in t.groups.items()}) for k in (1.0, 0.75, 0.5, 0.25, 0.125)]
    assert all(a > b for a, b in pairwise(preds)), preds
    assert preds[-1] >= t.scale * t.overhead_ms  # the overhead does not shrink
    for g, c in t.groups.items():  # each group alone: narrower is cheaper
        assert t.predict({g: c // 2}) < full, g
    # work-proportional: halving both sides of a conv quarters its time
    e = t.layers["layer2.0.conv2"]
    a, b = e.axes
    assert e.predict({a: t.groups[a] // 2, b: t.groups[b] // 2}) == pytest.approx(e.predict(t.groups) / 4, rel=1e-4)


def test_table_round_trips_through_save_and_load(r18_model, tmp_path):
    path = r18_model.table.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.predict(back.groups) == pytest.approx(r18_model.table.predict(r18_model.table.groups), rel=1e-6)
    assert back.meta["width_model"] == "work-proportional"


@pytest.mark.parametrize("name, nodes, hints, modules", [
    ("/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu",
     ["/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/relu/Relu"], [], ["layer1.0.conv1", "layer1.0.relu"]),
    ("features.1.conv.0.0.weight + QuantizeLinear_25 + Conv_29 + PWN(Clip_33)",
     ["Conv_29", "Clip_33"], ["features.1.conv.0.0"], [None, None]),
    ("PWN(PWN(Sigmoid_3, Mul_4), Add_5)", ["Sigmoid_3", "Mul_4", "Add_5"], [], [None, None, None]),
    ("/classifier/classifier_1/Gemm_myl9_2", ["/classifier/classifier_1/Gemm"], [], ["classifier.1"]),
    ("Reformatting CopyNode for Input Tensor 0 to /conv1/Conv + /relu/Relu", [], [], []),
    ("dummy_shape_call__mye548_0_myl24_0", [], [], []),
    ("QuantizeLinear_98", [], [], []),
    ("/features/features.1/conv/conv.0/conv.0.0/Conv", ["/features/features.1/conv/conv.0/conv.0.0/Conv"], [],
     ["features.1.conv.0.0"]),
])
def test_layer_names_to_onnx_nodes_and_modules(name, nodes, hints, modules):
    got_nodes, got_hints = onnx_nodes(name)
    assert (got_nodes, got_hints) == (nodes, hints)
    assert [module_path(n) for n in got_nodes] == modules


def test_metadata_wins_over_the_name():
    assert onnx_nodes("__myl_MulSumAdd_myl24_1", "[ONNX Layer: /fc/Gemm]") == (["/fc/Gemm"], [])
    assert module_path("/GlobalAveragePool") is None


def test_layer_info_with_plain_name_strings(tmp_path):
    names = [r.name for r in load_profile(f(R18, "profile")).rows]
    p = tmp_path / "names.json"
    p.write_text(json.dumps({"Layers": names, "Bindings": ["input", "output"]}))
    r = from_trtexec(f(R18, "profile"), p, e2e_ms=0.3)
    assert r.table.predict({}) == pytest.approx(0.3, rel=1e-4)
    assert "layer1.0.conv2" in r.table.layers and r.table.meta["e2e_source"] == "--e2e-ms"


def test_e2e_ms_overrides_times_and_metadata():
    r = build(ALEX, times=f(ALEX, "timing"), metadata=f(ALEX, "profile.metadata"), e2e_ms=0.5)
    assert r.e2e.median_ms == 0.5 and r.table.meta["device"] == "NVIDIA GeForce RTX 3060 Laptop GPU"


def _bad_files(tmp):
    text = f(R18, "profile").read_text()
    rows = json.loads(text)
    cases = {"malformed": ("profile", "{not json"), "truncated": ("profile", text[:len(text) // 2]),
             "cut in a string": ("profile", text[:400]), "no count header": ("profile", json.dumps(rows[1:])), "empty": ("profile", ""),
             "no rows": ("profile", json.dumps(rows[:1])),
             "negative time": ("profile", json.dumps([rows[0], {**rows[1], "averageMs": -1}])),
             "graph not an object": ("graph", "[]"),
             "times without computeMs": ("times", json.dumps([{"latencyMs": 1}])),
             "metadata without GPU compute": ("metadata", json.dumps({"performance_summary": {"Latency": [1]}}))}
    out = {}
    for k, (kind, body) in cases.items():
        p = tmp / f"{k.replace(' ', '_')}.json"
        p.write_text(body)
        out[k] = (kind, p)
    return out


def test_bad_files_are_one_line_usage_errors(tmp_path):
    for case, (kind, p) in _bad_files(tmp_path).items():
        kw = {"profile": (p, None), "graph": (f(R18, "profile"), p)}.get(kind, (f(R18, "profile"), None))
        extra = {"times": {"times": p}, "metadata": {"metadata": p}}.get(kind, {})
        with pytest.raises(UsageError) as e:
            from_trtexec(*kw, **extra)
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg, (case, msg)
        if case in ("truncated", "cut in a string"):
            assert "truncated" in msg
        if case == "malformed":
            assert "malformed JSON" in msg
        if case == "no count header":
            assert '{"count": N}' in msg


def test_layer_info_of_another_engine_is_refused():
    with pytest.raises(UsageError, match="does not describe the profiled engine"):
        from_trtexec(f(ALEX, "profile"), f(R18, "graph"))
    with pytest.raises(UsageError, match="cannot read"):
        from_trtexec(FIX / "missing.profile.json")
    with pytest.raises(UsageError, match="positive"):
        from_trtexec(f(ALEX, "profile"), e2e_ms=-1)
    assert load_metadata(f(R18, "profile.metadata")).performance_summary.gpu_compute[3] == 0.276855


def test_cli_end_to_end(cli, tmp_path):
    out = tmp_path / "t.json"
    p = cli(["profile", "--from-trtexec", f(R18, "profile"), "--layer-info", f(R18, "graph"),
             "--metadata", f(R18, "profile.metadata"), "--out", out], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "0.3635 ms vs end to end 0.2769 ms" in p.stdout and "scale 0.7616" in p.stdout
    assert "mapped 0.3535 ms (97.2%)" in p.stdout and "calibrated error: 0.00%" in p.stdout
    t = LatencyTable.load(out)
    assert t.meta["source"] == "trtexec" and t.predict({}) == pytest.approx(0.276855, rel=1e-4)


def test_cli_uncalibrated_says_so(cli, tmp_path):
    p = cli(["profile", "--from-trtexec", f(QAT, "profile"), "--layer-info", f(QAT, "graph"),
             "--out", tmp_path / "q.json"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "uncalibrated, scale 1" in p.stdout


def test_cli_bad_file_exits_2_with_one_line_and_writes_nothing(cli, tmp_path):
    bad = tmp_path / "cut.json"
    bad.write_text(f(R18, "profile").read_text()[:400])
    out = tmp_path / "t.json"
    p = cli(["profile", "--from-trtexec", bad, "--out", out], cwd=tmp_path)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "truncated" in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    p = cli(["profile", "--from-trtexec", f(R18, "profile")], cwd=tmp_path)
    assert p.returncode == 2 and "--out" in p.stderr
    p = cli(["profile", "--from-trtexec", f(R18, "profile"), "--out", tmp_path], cwd=tmp_path)
    assert p.returncode == 2 and "is a directory" in p.stderr
