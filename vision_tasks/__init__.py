"""vision_tasks: multi-task computer vision on COCO data."""
