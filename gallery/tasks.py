"""django-q2 tasks: thin wrappers that hand an image id to the pipeline."""

from gallery.pipeline import embed_batch, segment_batch


def embed_images(image_id: int) -> dict:
    report = embed_batch(first_id=image_id)
    return {"processed": report.processed, "failed": report.failed}


def segment_images(image_id: int) -> dict:
    report = segment_batch(first_id=image_id)
    return {"processed": report.processed, "failed": report.failed}
