"""Reads of the gallery: the page and the REST API list images through the same selector."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gallery import selectors
from tests.gallery.factories import add_mask, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled(media_root):
    cat_and_dog, cat, plain = make_image(name="both.png"), make_image(name="cat.png"), make_image(name="plain.png")
    add_mask(cat_and_dog, label="cat")
    add_mask(cat_and_dog, label="dog", class_index=12)
    add_mask(cat, label="cat")
    return {"both": cat_and_dog, "cat": cat, "plain": plain}


def test_image_list_filters_by_label_newest_first_without_duplicates(labelled):
    assert list(selectors.image_list(label="cat")) == [labelled["cat"], labelled["both"]]
    assert list(selectors.image_list(label="dog")) == [labelled["both"]]
    assert list(selectors.image_list()) == [labelled["plain"], labelled["cat"], labelled["both"]]
    assert list(selectors.image_list(label="horse")) == []


def test_label_counts_count_images_per_label(labelled):
    assert selectors.label_counts() == [("cat", 2), ("dog", 1)]


def test_label_counts_are_counted_once_until_a_mask_is_added_or_images_are_deleted(labelled, monkeypatch,
                                                                                   django_assert_num_queries):
    """The count reads every mask (1.2 s at 1.5M masks) and ran on every gallery and search page."""
    from gallery import services
    from gallery.models import Mask

    assert selectors.label_counts() == [("cat", 2), ("dog", 1)]
    with django_assert_num_queries(2):  # the newest mask's id and the shared version: no count
        assert selectors.label_counts() == [("cat", 2), ("dog", 1)]
    add_mask(labelled["plain"], label="bird", class_index=3)  # a new mask: counted again at once
    assert selectors.label_counts() == [("bird", 1), ("cat", 2), ("dog", 1)]
    services.image_delete(image=labelled["both"])  # deleted images: at once too
    assert selectors.label_counts() == [("bird", 1), ("cat", 1)]
    Mask.objects.filter(label="bird").update(label="heron")  # anything else: within LABEL_COUNTS_SECONDS
    assert selectors.label_counts() == [("bird", 1), ("cat", 1)]
    monkeypatch.setattr(selectors, "LABEL_COUNTS_SECONDS", 0)
    from django.core.cache import caches

    caches["default"].clear()
    assert selectors.label_counts() == [("cat", 1), ("heron", 1)]


def test_page_and_api_list_the_same_images_for_a_label(client, user, labelled):
    client.force_login(user)
    api = client.get(reverse("api-images"), {"label": "cat"}).json()
    assert api["count"] == 2 and [row["original_name"] for row in api["results"]] == ["cat.png", "both.png"]
    page = client.get(reverse("pages:gallery"), {"label": "cat"}).content.decode()
    assert "cat.png" in page and "both.png" in page and "plain.png" not in page
    assert '>cat <span class="hint">2</span></a>' in page and '>dog <span class="hint">1</span></a>' in page


def test_the_queue_counts_each_waiting_image_once(media_root):
    from gallery.models import ProcessingStatus

    make_image(status=ProcessingStatus.PENDING)  # waits for its vectors, then its masks (both pending)
    make_image()  # has its vectors, waits for its masks
    done = make_image()
    done.masks_status = ProcessingStatus.READY
    done.save(update_fields=["masks_status"])
    assert selectors.images_pending_count() == 2


def test_each_deletion_renews_the_label_counts_without_a_statement_the_database_refuses(labelled, settings):
    """Every delete wrote "ERROR: duplicate key value violates unique constraint" to PostgreSQL's log: the
    shared cache's add() of a version already there is an INSERT that fails."""
    from django.core.cache import caches
    from django.db import connection

    refused: list[str] = []

    def watch(execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        except Exception:
            refused.append(sql)
            raise

    assert dict(selectors.label_counts()) == {"cat": 2, "dog": 1}
    versions = []
    with connection.execute_wrapper(watch):
        for image in (labelled["cat"], labelled["both"]):
            image.delete()
            selectors.labels_changed()
            versions.append(caches[settings.SHARED_CACHE].get(selectors._LABELS_VERSION))
            assert dict(selectors.label_counts()) == ({"cat": 1, "dog": 1} if len(versions) == 1 else {})
    assert refused == [] and versions[0] != versions[1]
