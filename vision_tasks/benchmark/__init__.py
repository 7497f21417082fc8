"""Speed, memory and learning-quality measurements per task (``tools/benchmark.py``).

Speed: one real batch from the task's own data pipeline (synthetic default), then timed
repetitions after warm-up of (a) a training step (forward, loss, backward, optimiser step),
(b) inference at batch 1 (forward + the task's decode/post-processing) and (c) inference at
batch 16, each also for the bare backbone on the same input, so the share of time spent outside
the backbone (neck, head, loss, post-processing) is stated; for the joint model also the
training step with each head left out in turn, so what each head costs is stated. Every figure
is a median with its spread (min/max) over the repetitions. ``--task all`` runs each task in its
own process so the peak resident memory is the task's own.

Quality (``--quality``): runs ``tools/train.py --task NAME`` with its budgeted default config on
the synthetic default, records the wall time and the headline metric of the run's report.

One module per job; import from here, not from them:

- ``measure``: timing helpers, the task built as training builds it, the speed figures;
- ``results``: the table, the environment, merging into the results JSON;
- ``cli``: ``main`` (the options), the quality runs, one subprocess per task.
"""

from vision_tasks.benchmark.cli import DEFAULT_OUTPUT, ROOT, argv_of, main, quality
from vision_tasks.benchmark.measure import (
    build,
    fuse_conv_bn,
    loader_speed,
    peak_rss_mib,
    speed,
    timed,
    timed_in_turns,
)
from vision_tasks.benchmark.results import environment, format_table, merge_results

__all__ = [
    "DEFAULT_OUTPUT",
    "ROOT",
    "argv_of",
    "build",
    "environment",
    "format_table",
    "fuse_conv_bn",
    "loader_speed",
    "main",
    "merge_results",
    "peak_rss_mib",
    "quality",
    "speed",
    "timed",
    "timed_in_turns",
]
