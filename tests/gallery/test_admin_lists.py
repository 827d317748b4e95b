"""Admin at scale: what its lists read from the database, and a save that keeps a worker's writes."""

import numpy as np
import pytest
from django.contrib.admin.sites import site
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gallery.models import Image
from tests.gallery.factories import add_embedding, add_mask, make_image

pytestmark = pytest.mark.django_db


def page_queries(client, url: str) -> tuple[str, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode(), [query["sql"] for query in captured.captured_queries]


def test_the_lists_read_neither_mask_pictures_nor_vectors_nor_sort_every_column(admin_client):
    images = [make_image(name=f"pic{i}.png", color=(40 * i, 0, 0)) for i in range(3)]
    for image in images:
        add_mask(image, label="cat")
        add_mask(image, label="cat", class_index=9)  # two masks of one label: the label filter's duplicates
        add_embedding(image, space="content", model_key="autoencoder/v2", vector=np.full(1024, 1 / 1024))

    page, queries = page_queries(admin_client, reverse("admin:gallery_mask_changelist"))
    assert not any("probability_png" in sql for sql in queries)  # 35-41 KB each of a photo's masks, unshown
    page, queries = page_queries(admin_client, reverse("admin:retrieval_embedding_changelist"))
    listing = [sql.replace('vector_dims("gallery_embedding"."vector")', "")  # counted there, not sent
               for sql in queries if 'FROM "gallery_embedding"' in sql]
    assert listing and not any('"gallery_embedding"."vector"' in sql for sql in listing)
    assert page.count('<td class="field-dimension">1024</td>') == 3  # the dimension, counted in the database
    page, queries = page_queries(admin_client, reverse("admin:gallery_image_changelist"))
    assert not any('DISTINCT "gallery_image"."id"' in sql for sql in queries)  # every column: sorts the table
    assert not any('DISTINCT "gallery_mask"."label"' in sql for sql in queries)  # the labels: counted and cached
    assert "cat (3)" in page  # the label filter's choice, with its images
    for query in ("?masks__label=cat", "?q=cat"):  # where a join could repeat an image: each once
        page, _ = page_queries(admin_client, reverse("admin:gallery_image_changelist") + query)
        assert all(page.count(f">pic{i}.png<") == 1 for i in range(3)), query
        assert "3 images" in page


def test_renaming_in_admin_keeps_what_a_worker_wrote_meanwhile(rf, admin_user):
    """The change form was read while the image was pending; a worker finished it before the form was
    saved: the save writes the name it changed, not the status it read (the image stayed 'pending')."""
    image = make_image(name="old.png", status="pending")
    image_admin = site._registry[Image]
    request = rf.post("/")
    request.user = admin_user
    opened = Image.objects.get(pk=image.pk)
    form_class = image_admin.get_form(request, opened, change=True)
    form = form_class({"original_name": "new.png"}, instance=opened)
    assert form.is_valid(), form.errors
    Image.objects.filter(pk=image.pk).update(status="ready", masks_status="ready")  # the worker's commit
    image_admin.save_model(request, form.save(commit=False), form, change=True)
    image.refresh_from_db()
    assert (image.original_name, image.status, image.masks_status) == ("new.png", "ready", "ready")
