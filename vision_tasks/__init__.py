"""vision_tasks: multi-task computer vision on COCO data with one shared ResNet backbone."""

import os as _os

# albumentations otherwise checks PyPI for a newer release at import: slow and noisy offline.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
