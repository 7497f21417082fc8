"""Speed, memory and learning-quality measurements per task (``tools/benchmark.py``).

See ``measure.py``. Every name stays importable from here, as from the single ``benchmark.py``
this package was.
"""

from vision_tasks.benchmark.measure import (
    DEFAULT_OUTPUT,
    ROOT,
    argv_of,
    build,
    environment,
    format_table,
    fuse_conv_bn,
    loader_speed,
    main,
    merge_results,
    peak_rss_mib,
    quality,
    speed,
    timed,
    timed_in_turns,
)

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
