"""The names images are stored and shown under: one per file, whichever way it came in."""

import io
import re
import unicodedata
from importlib import import_module

import pytest
from django.apps import apps
from django.contrib.admin.sites import site
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image as PILImage
from rest_framework.authtoken.models import Token
from skimage import data as skdata

from gallery.models import Image, Mask
from gallery import services
from gallery.services import image_add
from tests.gallery.factories import add_mask, make_image, png_bytes

pytestmark = pytest.mark.django_db

DECOMPOSED = unicodedata.normalize("NFD", "café été.png")  # as macOS writes names


def test_import_folder_stores_names_composed_without_bidirectional_controls(settings, tmp_path, media_root):
    """import_folder kept U+202E (RIGHT-TO-LEFT OVERRIDE), which reversed the name and the sentence after it
    on every page ("gnp.exe.png_OLTR"), where an upload of the same file lost it; a decomposed é was not
    found by a search for é."""
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    for name in ("\u202eRTLO_gnp.exe.png", DECOMPOSED, "\u2067ltr\u2069 \u200fmark.png",
                 "emoji \U0001f469\u200d\U0001f52c.png"):
        (tmp_path / name).write_bytes(png_bytes())
    call_command("import_folder", str(tmp_path))
    assert sorted(Image.objects.values_list("original_name", flat=True)) == sorted(
        ["RTLO_gnp.exe.png", "café été.png", "ltr mark.png", "emoji \U0001f469\u200d\U0001f52c.png"])  # ZWJ kept


def test_a_folders_names_with_control_characters_forge_no_lines_and_send_no_terminal_escapes(settings, tmp_path,
                                                                                            media_root):
    """A file named "b\n2026-12-07 ERROR x: forged.png" printed a forged line of its own in import_folder's
    report (and the worker's log), "\x1b[2J..." cleared the operator's terminal; both names were stored so."""
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    (tmp_path / "a\nERROR x: forged.png").write_bytes(png_bytes())
    (tmp_path / "\x1b[2J\x1b[31mclear.png").write_bytes(png_bytes())
    (tmp_path / "b\n2026-12-07 ERROR x: forged\x1b[31m.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = io.StringIO()
    call_command("import_folder", str(tmp_path), stdout=out)
    stored = sorted(Image.objects.values_list("original_name", flat=True))
    assert stored == ["[2J[31mclear.png", "a ERROR x: forged.png"]
    report = out.getvalue()
    assert "\x1b" not in report and "\n2026-12-07" not in report
    assert "  rejected b\\n2026-12-07 ERROR x: forged\\x1b[31m.png: " in report  # on its own line, written out


@pytest.mark.parametrize("given, stored", [("   ", "upload"), ("\ufeff\u202e", "upload"), (" a.png", " a.png")])
def test_a_name_that_would_show_nothing_is_stored_as_upload(media_root, given, stored):
    """A name of spaces was kept: its links in the gallery and admin had no visible text."""
    assert image_add(data=png_bytes(), original_name=given, enqueue=False).image.original_name == stored


def test_admin_finds_a_name_typed_decomposed_or_composed_and_keeps_an_edited_name_composed(rf, admin_user,
                                                                                            media_root):
    image = make_image(name="café.png")
    image_admin = site._registry[Image]
    request = rf.get("/")
    request.user = admin_user
    mask = add_mask(image)
    for term in ("café", unicodedata.normalize("NFD", "café")):
        found, _ = image_admin.get_search_results(request, Image.objects.all(), term)
        assert list(found) == [image], ascii(term)
        masks, _ = site._registry[Mask].get_search_results(request, Mask.objects.all(), term)  # by its image's name
        assert list(masks) == [mask], ascii(term)

    form = image_admin.get_form(request, image, change=True)({"original_name": DECOMPOSED}, instance=image)
    assert form.is_valid(), form.errors
    image_admin.save_model(request, form.save(commit=False), form, change=True)
    image.refresh_from_db()
    assert image.original_name == "café été.png"


def test_names_stored_before_are_composed_by_the_migration(media_root):
    decomposed, reversed_, plain = (make_image(name=name) for name in (DECOMPOSED, "\u202eabc.png", "plain.png"))
    import_module("gallery.migrations.0010_image_names_composed").names_composed(apps, None)
    names = {image.pk: name for image, name in ((decomposed, "café été.png"), (reversed_, "abc.png"),
                                                (plain, "plain.png"))}
    assert dict(Image.objects.values_list("pk", "original_name")) == names


@pytest.mark.parametrize("before, after", [("../../etc/passwd", "passwd"), ("\ufeff", "upload"),
                                           ("\u200b\u200b", "upload"), ("   ", "upload"), ("", "upload"),
                                           (DECOMPOSED, "café été.png"), ("photos/\u202ecat.png", "cat.png"),
                                           ("plain.png", "plain.png"), ("Ölmühle 1.jpg", "Ölmühle 1.jpg")])
def test_names_an_older_release_stored_are_stored_as_new_ones_by_the_migration(media_root, before, after):
    """An older admin accepted a path or invisible characters as a name; 0010 composed names but kept those."""
    image = make_image(name="x.png")
    Image.objects.filter(pk=image.pk).update(original_name=before)  # as the older release wrote it
    import_module("gallery.migrations.0012_image_names_as_stored").names_as_stored(apps, None)
    image.refresh_from_db()
    assert image.original_name == after == services.stored_name(before)


@pytest.mark.parametrize("before, after", [("a\nERROR forged.png", "a ERROR forged.png"), ("\x1b[2J.png", "[2J.png"),
                                           ("tab\tname.png", "tab name.png"), ("\x07\x85", "upload"),
                                           ("\x9bcafe\u0301.png", "café.png"), ("plain.png", "plain.png")])
def test_names_an_older_release_stored_with_control_characters_lose_them_by_the_migration(media_root, before, after):
    """0012 left them: a name with a line break still wrote a forged line into retry_failed's output."""
    image = make_image(name="x.png")
    Image.objects.filter(pk=image.pk).update(original_name=before)  # as the older release wrote it
    import_module("gallery.migrations.0015_image_names_without_controls").names_without_controls(apps, None)
    image.refresh_from_db()
    assert image.original_name == after == services.stored_name(before)


def test_the_gallery_page_tells_each_added_file_by_the_name_it_is_stored_under(media_root, user):
    """It said "they are being processed: ." for a name of spaces, stored as "upload"."""
    from gallery.services import uploads_add

    outcomes = uploads_add(files=[("   ", png_bytes), (DECOMPOSED, png_bytes)], user=user)
    assert [outcome.name for outcome in outcomes] == ["upload", "café été.png"]
    assert sorted(outcome.image.original_name for outcome in outcomes) == ["café été.png", "upload"]


def test_a_name_edited_in_admin_that_is_stored_otherwise_says_so(client, admin_user, media_root):
    """"../../etc/passwd" was saved as "passwd" with only "changed successfully"."""
    image = make_image(name="cat.png")
    client.force_login(admin_user)
    url = reverse("admin:gallery_image_change", args=[image.pk])
    # the page's inline forms' management fields, as a browser sends them back
    management = dict(re.findall(r'name="([\w-]+_FORMS)"[^>]*value="(\d+)"', client.get(url).content.decode()))
    saved = client.post(url, {**management, "original_name": "../../etc/passwd"}, follow=True).content.decode()
    image.refresh_from_db()
    assert image.original_name == "passwd"
    assert "The name was saved as “passwd”: a name is a file&#x27;s name, without folders (“/”)" in saved
    invisible = client.post(url, {**management, "original_name": "\u200b"}, follow=True).content.decode()
    assert "The name was saved as “upload”: nothing of the name typed would show." in invisible
    again = client.post(url, {**management, "original_name": DECOMPOSED}, follow=True).content.decode()
    assert "was changed successfully" in again and "was saved as" not in again  # composing it is no news


def test_an_uploaded_name_keeps_its_joiners_as_an_imported_one_does(client, user, media_root):
    """Django's multipart parser dropped every "non-printable" character: a family emoji (joined by U+200D)
    became three people, a Persian word (U+200C) another word; import_folder kept both."""
    def picture(seed: int) -> bytes:
        buffer = io.BytesIO()
        PILImage.fromarray(skdata.astronaut()[seed:seed + 64, :64]).save(buffer, format="PNG")
        return buffer.getvalue()

    family, persian = "👨\u200d👩\u200d👧 family.png", "می\u200cخواهم.png"
    key = Token.objects.create(user=user).key
    added = client.post("/api/images/", {"file": SimpleUploadedFile(family, picture(0))},
                        HTTP_AUTHORIZATION=f"Token {key}")
    assert added.status_code == 201 and added.json()["original_name"] == family
    tabbed = client.post("/api/images/", {"file": SimpleUploadedFile("tab\there.png", picture(4))},
                         HTTP_AUTHORIZATION=f"Token {key}")  # "tabhere.png"; "tab here.png" imported
    assert tabbed.json()["original_name"] == "tab here.png" == services.stored_name("tab\there.png")
    client.force_login(user)
    for name, seed in ((persian, 1), ("C:\\Users\\Jane\\\u202egnp.exe.png", 2), ("../../&quot;x&quot;.png", 3)):
        client.post(reverse("pages:images-add"), {"files": SimpleUploadedFile(name, picture(seed))})
    assert set(Image.objects.values_list("original_name", flat=True)) == {family, persian, "gnp.exe.png", '"x".png',
                                                                           "tab here.png"}
