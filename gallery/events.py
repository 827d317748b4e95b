"""What the gallery tells the rest of the product, and how it hands work to the workers.

The retrieval app listens to these signals to keep its indexes current without full rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.dispatch import Signal

# Sent after commit with image_ids, space, model_key: new vectors are in Postgres.
embeddings_stored = Signal()
# Sent inside the deleting transaction with image_ids.
images_deleted = Signal()


def schedule_processing(image_ids: Sequence[int]) -> None:
    """Enqueue embedding and segmentation (separate tasks: search needs only the first)."""
    from django_q.tasks import async_task

    for image_id in image_ids:
        async_task("gallery.tasks.embed_images", image_id, task_name=f"embed-{image_id}", group="embed")
        async_task("gallery.tasks.segment_images", image_id, task_name=f"segment-{image_id}", group="segment")
