"""What the gallery tells the layer above it. gallery never imports retrieval: it sends these
signals, and retrieval's receivers (retrieval/receivers.py) compute, store and forget vectors.

Every signal is sent with `sender=Image`.
"""

from __future__ import annotations

from django.dispatch import Signal

# After commit, `image_ids`: images were added (or put back in the queue) and wait for processing.
images_added = Signal()
# Inside the deleting transaction, `image_ids`: these images are gone once it commits.
images_deleted = Signal()
# After a reset deleted every image and stored file: whatever was derived from them goes too.
gallery_emptied = Signal()
# `progress`, `batch_size`: process every waiting image in this process before returning, calling
# progress(n) as images finish (import_folder --sync, the reset job). Receivers raise to fail the caller.
processing_wanted = Signal()
# Asked before a reset, to show what it deletes: receivers return [(count, "what")] of the data they
# derived from the images, e.g. [(42, "embeddings, and the search indexes")].
derived_data_counted = Signal()
# After a reset filled the gallery again and processed it: rebuild what serves searches from it.
gallery_reloaded = Signal()
