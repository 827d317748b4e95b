"""The status banner on every page reads a cached state; the check behind it (counts, index load)
runs in the background, never on the page's own time."""

from __future__ import annotations

import threading

import pytest
from django.urls import reverse

from retrieval import status
from retrieval.integrity import IntegrityReport
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


class Checks:
    """Counts the integrity checks (by thread name); a check waits for `release`, like a slow one."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def integrity_check(self, *, check_files: bool = True) -> IntegrityReport:
        self.calls.append(threading.current_thread().name)
        assert self.release.wait(10)
        return IntegrityReport(state="count mismatch", indexes=[], missing_files=[])


@pytest.fixture
def checks(monkeypatch, settings, media_root) -> Checks:
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    checks = Checks()
    monkeypatch.setattr(status, "integrity_check", checks.integrity_check)
    monkeypatch.setattr(status, "images_pending_count", lambda: 7)
    monkeypatch.setattr(status, "_banner", None)
    return checks


def banner_of(page: str) -> tuple[str, str]:
    pending = page.split('id="banner-pending">', 1)[1].split("<", 1)[0]
    index = page.split("Index: <strong", 1)[1].split(">", 1)[1].split("<", 1)[0]
    return pending, index


def test_pages_show_the_cached_state_without_checking(client, user, settings, checks):
    settings.IMAGINAITION_BANNER_REFRESH_SECONDS = 3600
    checks.release.set()
    status.banner_refresh()
    assert checks.calls == ["MainThread"]
    client.force_login(user)
    for _ in range(3):
        page = client.get(reverse("pages:gallery")).content.decode()
        assert banner_of(page) == ("7", "count mismatch")
    assert len(checks.calls) == 1  # three pages, no further check


def test_after_a_quiet_spell_the_first_page_counts_the_images_waiting_itself(client, user, settings, checks,
                                                                           monkeypatch):
    """The banner showed 2,100 images waiting from the last page five minutes before, when none was."""
    settings.IMAGINAITION_BANNER_REFRESH_SECONDS = 10
    checks.release.set()
    status.banner_refresh()  # 7 waiting
    monkeypatch.setattr(status, "images_pending_count", lambda: 0)  # the workers finished meanwhile
    client.force_login(user)
    assert banner_of(client.get(reverse("pages:gallery")).content.decode()) == ("7", "count mismatch")  # recent
    wait_for(lambda: not status._banner_refreshing, timeout=10, message="the refresh to finish")
    monkeypatch.setattr(status, "_banner_at", status._banner_at - status.BANNER_COUNT_ON_THE_PAGE_AFTER - 1)
    monkeypatch.setattr(status, "_banner", status.Banner(profile="offline", pending=2100, index="ok"))
    assert banner_of(client.get(reverse("pages:gallery")).content.decode()) == ("0", "ok")
    wait_for(lambda: not status._banner_refreshing, timeout=10, message="the refresh to finish")


def test_a_stale_state_is_refreshed_in_the_background_for_the_next_page(client, user, settings, checks):
    settings.IMAGINAITION_BANNER_REFRESH_SECONDS = 0
    client.force_login(user)
    first = client.get(reverse("pages:gallery")).content.decode()
    assert banner_of(first) == ("…", "checking")  # nothing cached yet: the page did not wait for the check
    wait_for(lambda: checks.calls, timeout=10, message="the background check")
    assert checks.calls == ["banner-refresh"]  # on a thread of its own
    checks.release.set()
    wait_for(lambda: not status._banner_refreshing, timeout=10, message="the refresh to finish")
    assert banner_of(client.get(reverse("pages:gallery")).content.decode()) == ("7", "count mismatch")


def test_the_banner_says_when_a_model_change_is_under_way(client, user, settings, checks, monkeypatch):
    """Only /api/status/ said which model answered while the gallery was re-embedded."""
    from dataclasses import replace

    from retrieval.encoders.registry import active_models

    checks.release.set()
    client.force_login(user)
    status.banner_refresh()
    assert "Changing models" not in client.get(reverse("pages:gallery")).content.decode()
    active = active_models()
    monkeypatch.setattr(status, "serving_models", lambda active: replace(active, content="autoencoder/v1"))
    status.banner_refresh()
    page = client.get(reverse("pages:gallery")).content.decode()
    assert f'id="banner-model-change">content autoencoder/v1 → {active.content}<' in page
    assert "searches use the old model" in page
    # A new segmenter: the images waiting to be segmented again by it say so.
    from gallery.models import Image, ProcessingStatus
    from tests.gallery.factories import make_image

    make_image(name="again.png")
    Image.objects.update(segmented_by="offline/effnet-lite0-cam", masks_status=ProcessingStatus.PENDING)
    monkeypatch.setattr(status, "serving_models", lambda active: active)  # the vectors are done
    status.banner_refresh()
    page = client.get(reverse("pages:gallery")).content.decode()
    # Not "searches use the old model": each image's old masks go as it is segmented again.
    assert f'id="banner-segmenter-change">offline/effnet-lite0-cam → {active.segmenter}<' in page
    assert "labels and regions are replaced as it is segmented again" in page
    assert "Changing models" not in page and "searches use the old model" not in page


def test_the_banner_and_the_status_count_images_that_failed(client, user, checks):
    """Every image's segmentation failed under a new segmenter: the banner said "Index: ok" and nothing
    else, and /api/status/ had no count of failed masks."""
    from gallery.models import Image, ProcessingStatus
    from tests.gallery.factories import make_image

    checks.release.set()
    client.force_login(user)
    images = [make_image(name=f"{i}.png") for i in range(3)]
    status.banner_refresh()
    assert 'id="banner-failed"' not in client.get(reverse("pages:gallery")).content.decode()
    Image.objects.filter(pk__in=[images[0].pk, images[1].pk]).update(
        masks_status=ProcessingStatus.FAILED, masks_error="weights missing")
    Image.objects.filter(pk=images[2].pk).update(status=ProcessingStatus.FAILED, error="file missing")
    status.banner_refresh()
    page = client.get(reverse("pages:gallery")).content.decode()
    assert '<strong id="banner-failed" class="index-warn">3</strong>' in page
    answer = client.get("/api/status/").json()
    assert answer["masks_failed"] == 2 and answer["images"]["failed"] == 1
