"""Leaving what a process keeps for its life out of garbage collection."""

import gc


def settle_process() -> None:
    """Once a process has loaded what it keeps for its life (modules, the
    app, a model, the SEG writer's tables): what is garbage now is collected,
    and everything else is left out of garbage collection from then on.

    Full passes over those objects find nothing to free, and they cost more
    the more there are: 110 ms in a serving process (240,000 objects; a study
    of 1,000 instances sent an instance per STOW caused 12 of them, 1.3 s in
    all, and 47 of 5 ms once settled), 0.1-0.3 s every few jobs in a job
    worker (300,000 in an offload process, 600,000 beside torch). What is
    alive later is the work of the moment, and collected as usual.

    A worker settles again at each model it loads, in a test process too:
    what an earlier call froze is first given back to the collector, so that
    what died since (an app a test discarded, say) is freed, not kept for
    good. The server settles only in `serve`, never when a test builds it."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
