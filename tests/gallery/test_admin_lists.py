"""Admin at scale: what its lists read from the database, a save that keeps a worker's writes, and the
list's action that retries failed images."""

import numpy as np
import pytest
from django.contrib.admin.sites import site
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_q.models import OrmQ

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
    faceted, _ = page_queries(admin_client, reverse("admin:gallery_image_changelist") + "?_facets=True")
    assert "cat (3)" in faceted and "cat (3) (3)" not in faceted  # "Show counts": Django's count, once
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


def test_the_image_list_retries_the_failed_images_of_a_selection(admin_client, django_capture_on_commit_callbacks,
                                                                   django_user_model):
    """After the cause is fixed (weights fetched, storage back), staff retry failed images from the list:
    only the failed stage goes back to pending and is queued; the others are left as they are."""
    no_vectors, no_masks, fine = (make_image(name="a.png", status="failed"), make_image(name="b.png"),
                                  make_image(name="c.png"))
    Image.objects.update(masks_status="ready")
    Image.objects.filter(pk=no_vectors.pk).update(error="weights missing")
    Image.objects.filter(pk=no_masks.pk).update(masks_status="failed", masks_error="storage down")
    changelist = reverse("admin:gallery_image_changelist")
    selection = {"action": "retry_failed", "_selected_action": [no_vectors.pk, no_masks.pk, fine.pk]}
    queued = OrmQ.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(changelist, selection, follow=True).content.decode()
    assert "2 failed image(s) are back in the queue; 1 selected image(s) had not failed and are left as they are." in page
    assert OrmQ.objects.count() > queued  # handed to the workers
    states = {image.pk: (image.status, image.error, image.masks_status, image.masks_error)
              for image in Image.objects.all()}
    assert states[no_vectors.pk] == ("pending", "", "ready", "")
    assert states[no_masks.pk] == ("ready", "", "pending", "")
    assert states[fine.pk] == ("ready", "", "ready", "")
    page = admin_client.post(changelist, {**selection, "_selected_action": [fine.pk]}, follow=True).content.decode()
    assert "None of the selected images had failed" in page
    Image.objects.filter(pk=no_vectors.pk).update(status="failed")  # and from the list filtered by status
    page = admin_client.post(changelist + "?status__exact=failed", {**selection, "_selected_action": [no_vectors.pk]},
                             follow=True).content.decode()
    assert "1 failed image(s) are back in the queue." in page  # it said "; -1 had not failed"

    viewer = django_user_model.objects.create_user("viewer", password="x-viewer-pass-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_image"))
    admin_client.force_login(viewer)
    assert "retry_failed" not in admin_client.get(changelist).content.decode()  # changing images: not theirs


def test_added_by_links_to_the_account_only_for_staff_who_may_view_accounts(client, admin_user, django_user_model):
    """A staff member with only "Can view image" followed "Added by" to a 403."""
    image = make_image(name="hers.png")
    Image.objects.filter(pk=image.pk).update(added_by=admin_user)
    page_url = reverse("admin:gallery_image_change", args=[image.pk])
    account_url = reverse("admin:auth_user_change", args=[admin_user.pk])
    viewer = django_user_model.objects.create_user("viewer", password="x-viewer-pass-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_image"))

    client.force_login(viewer)
    page = client.get(page_url).content.decode()
    assert "Added by" in page and f">{admin_user.username}<" in page and account_url not in page
    assert client.get(account_url).status_code == 403  # where the link led
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    page = client.get(page_url).content.decode()
    assert f'<a href="{account_url}">{admin_user.username}</a>' in page
    client.force_login(admin_user)
    assert f'<a href="{account_url}">{admin_user.username}</a>' in client.get(page_url).content.decode()
