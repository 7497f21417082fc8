"""Re-identification: dataset view -> P x K sampler -> head -> losses -> task.

A sample is the crop of one COCO annotation that carries an identity (``track_id`` by default);
its camera is the image's ``camera_id``. The model follows "Bag of Tricks" (Luo et al. 2019):
backbone (optionally last stride 1) -> average or GeM pooling -> BNNeck; the batch-hard triplet
loss (Hermans et al. 2017) acts on the features before the BatchNorm, the label-smoothed identity
cross-entropy after it, and the L2-normalised BatchNorm output is the embedding. Evaluation is
CMC / mAP under the Market-1501 protocol (:class:`~vision_tasks.evaluation.metrics.ReidMetric`).

Identities are opaque integers; a missing, null or negative identity means "none" (Market-1501's
junk, -1): such annotations are left out and counted. The query / gallery split comes from the
data (annotation ``is_query`` or image ``split`` = ``query`` / ``gallery``) or, when no sample
has either, is made deterministically: the first annotation of each identity in each camera.
"""

from vision_tasks.tasks.reid.data import PKBatchSampler, ReidData, ReidDataset, crop_size
from vision_tasks.tasks.reid.model import (
    ReidHead,
    ReidTask,
    batch_hard_triplet_loss,
    hardest_pairs,
    identity_loss,
)

__all__ = [
    "PKBatchSampler",
    "ReidData",
    "ReidDataset",
    "ReidHead",
    "ReidTask",
    "batch_hard_triplet_loss",
    "crop_size",
    "hardest_pairs",
    "identity_loss",
]
