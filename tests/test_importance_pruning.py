"""The channels a prune run keeps are the ones its --importance criterion ranks highest, not L1's
(the search planned with that criterion, so pruning by another one breaks the plan)."""
from __future__ import annotations

import torch

from edgeprune import api
from edgeprune.pruning.prune import prune_to_widths
from edgeprune.training.models import build_model, load_weights

SIZE = 16


def test_prune_keeps_the_channels_of_the_chosen_criterion(tmp_path, fake_target_file):
    budget = 0.75 * api.measure("tiny_resnet", str(fake_target_file), SIZE).median_ms
    out = tmp_path / "out"
    report = api.prune("tiny_resnet", out, budget, str(fake_target_file), data="digits", finetune=False,
                       input_size=SIZE, baseline_epochs=1, progress=False, importance="bn_scale",
                       profiles_dir=str(tmp_path / "profiles"))
    baseline = load_weights(build_model("tiny_resnet", num_classes=10), out / "baseline.pt").eval()
    shape = (1, 3, SIZE, SIZE)
    by_bn = dict(prune_to_widths(baseline, shape, report["widths"], "bn_scale").named_parameters())
    by_l1 = dict(prune_to_widths(baseline, shape, report["widths"], "l1").named_parameters())
    got = torch.load(out / "model.pt", weights_only=True)  # weights as pruned (BN statistics re-estimated)
    assert any(not torch.equal(by_bn[k], by_l1[k]) for k in by_bn), "criteria agree: the test cannot tell"
    assert all(torch.equal(got[k], by_bn[k]) for k in by_bn)
    assert report["speedup_method"] == "paired" and report["speedup_ci"][0] <= report["speedup"]
    assert report["search"]["objective"] == "adaptive-bn" and report["search"]["candidates"] > 2
    assert 0 <= report["accuracy_pruned"] <= 1 and 0 <= report["accuracy_recalibrated"] <= 1


def test_a_group_the_criterion_cannot_score_is_named(capsys):
    """bn_scale on a network without BatchNorm: every group counts its channels equally, and
    stderr says so instead of the search silently treating them as uniform."""
    import torch.nn as nn

    from edgeprune.pruning.importance import importances
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    scores = importances(net, (1, 3, 16, 16), "bn_scale")
    assert scores and all((s == 1).all() for s in scores.values())
    err = capsys.readouterr().err
    assert "importance 'bn_scale' cannot score" in err and "count equally" in err
    importances(net, (1, 3, 16, 16), "l1")
    assert capsys.readouterr().err == ""
