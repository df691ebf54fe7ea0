"""``edgeprune prune`` under torchrun: what the ranks other than 0 do.

Rank 0 runs the whole job as one process would: it alone profiles, searches and measures
(processes measuring side by side would time each other's load, and could choose different
widths), and it alone writes files. The other ranks only train beside it: they open the same
session, train the baseline with it (one DDP rank each), and for every pruning step receive the
step rank 0 chose (widths, epochs, checkpoint key), prune their copy to those widths and
fine-tune with it. They write nothing; train() gives them rank 0's weights at each start.

While rank 0 profiles and measures, the others wait in their first collective; the process
group's timeout (``distributed.WAIT``) is long enough for a profile to finish.
"""
from __future__ import annotations

import copy

from edgeprune.training import distributed


def announce(run: distributed.Dist, step: dict | None) -> None:
    """Rank 0: the next step for the other ranks (``None``: no more steps). A no-op alone."""
    run.broadcast(step)


def follow(job) -> None:
    """A rank other than 0: train every training stage of ``job`` beside rank 0."""
    from edgeprune.pruning.prune import prune_to_widths
    from edgeprune.session import Session
    from edgeprune.training.finetune import finetune_pruned
    s = Session.open(job.session)
    run = distributed.init(s.cfg.device)
    s.ensure_trained(job.out / "baseline.ckpt")  # rank 0 alone reads and writes it
    teacher, current = copy.deepcopy(s.model).eval(), s.model
    while (step := run.broadcast(None)) is not None:
        current = prune_to_widths(current, s.input_shape, step["widths"], step["importance"], engine=step["engine"])
        finetune_pruned(current, teacher, s.data, step["epochs"], threads=s.cfg.train_threads,
                        checkpoint=job.out / f"finetune{step['k']}.ckpt", key=step["key"], progress=False,
                        device=s.cfg.device)
