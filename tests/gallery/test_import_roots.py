"""Server-side folders are read only under IMAGINAITION_IMPORT_ROOTS; resetting needs its own permission."""

import os
import unicodedata

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from PIL import Image as PILImage

from gallery.accounts import admin_ensure
from gallery.folders import FolderRefused, import_folder_check
from gallery.models import Image, ResetJob
from gallery.reset import ResetRefused, reset_run, reset_start
from tests.gallery.factories import make_image


@pytest.fixture
def roots(settings, tmp_path):
    """An allowed root with a photo folder in it, and a folder outside it with a 'secret' picture."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "photos").mkdir(parents=True)
    outside.mkdir()
    PILImage.new("RGB", (32, 24), (200, 30, 30)).save(allowed / "photos" / "red.png")
    PILImage.new("RGB", (32, 24), (30, 30, 200)).save(outside / "secret.png")
    settings.IMAGINAITION_IMPORT_ROOTS = [allowed]
    return allowed, outside


def test_a_folder_under_a_root_is_accepted_and_resolved(roots):
    allowed, _ = roots
    assert import_folder_check(str(allowed / "photos")) == (allowed / "photos").resolve()
    assert import_folder_check(allowed) == allowed.resolve()  # the root itself


def test_a_folder_typed_with_its_accents_encoded_otherwise_than_on_disk_is_found(roots):
    """A folder macOS named "Fotos-Café" (e + a combining accent) typed on a keyboard (é whole) "does not
    exist", in a message that showed the very name `ls` lists."""
    allowed, outside = roots
    on_disk = allowed / unicodedata.normalize("NFD", "Fotos-Café")
    on_disk.mkdir()
    typed = allowed / unicodedata.normalize("NFC", "Fotos-Café")
    assert str(typed) != str(on_disk) and import_folder_check(str(typed)) == on_disk.resolve()
    (outside / unicodedata.normalize("NFD", "Café")).mkdir()
    with pytest.raises(FolderRefused, match="outside the folders"):  # still judged before anything is looked up
        import_folder_check(str(outside / unicodedata.normalize("NFC", "Café")))


@pytest.mark.parametrize("escape", ["outside", "dotdot", "symlink", "symlinked-root-parent"])
def test_paths_leading_outside_the_roots_are_refused(roots, escape):
    allowed, outside = roots
    if escape == "outside":
        path = outside
    elif escape == "dotdot":
        path = allowed / "photos" / ".." / ".." / "outside"
    elif escape == "symlink":
        path = allowed / "looks-inside"
        os.symlink(outside, path)
    else:
        path = allowed / "up"
        os.symlink(allowed.parent, path)
        path = path / "outside"
    with pytest.raises(FolderRefused, match="outside the folders this server may import from") as refused:
        import_folder_check(str(path))
    assert str(allowed.resolve()) in str(refused.value)  # says where it may read from


def test_a_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(roots):
    allowed, outside = roots
    messages = []
    for path in (outside, outside / "no-such-folder"):
        with pytest.raises(FolderRefused, match="outside the folders") as refused:
            import_folder_check(str(path))
        messages.append(str(refused.value).replace(str(path), "PATH"))
    assert messages[0] == messages[1]  # nothing tells whether a folder out there exists
    with pytest.raises(FolderRefused, match="does not exist"):  # inside, it helps to say so
        import_folder_check(str(allowed / "no-such-folder"))


def test_a_relative_path_is_refused_for_pages_and_resolved_for_the_command(roots, monkeypatch):
    allowed, _ = roots
    with pytest.raises(FolderRefused, match="absolute path"):
        import_folder_check("photos")
    monkeypatch.chdir(allowed)
    assert import_folder_check("photos", require_absolute=False) == (allowed / "photos").resolve()


def test_no_roots_configured_refuses_everything(roots, settings):
    settings.IMAGINAITION_IMPORT_ROOTS = []
    with pytest.raises(FolderRefused, match="none configured"):
        import_folder_check(str(roots[0] / "photos"))


@pytest.mark.django_db
def test_import_folder_reads_nothing_outside_the_roots(roots, media_root):
    allowed, outside = roots
    with pytest.raises(CommandError, match="outside the folders"):
        call_command("import_folder", str(outside))
    with pytest.raises(CommandError, match="outside the folders"):
        call_command("import_folder", str(allowed / "photos" / ".." / ".." / "outside"))
    assert not Image.objects.exists()
    call_command("import_folder", str(allowed / "photos"))
    assert list(Image.objects.values_list("original_name", flat=True)) == ["red.png"]


@pytest.mark.django_db
def test_the_admin_form_refuses_a_folder_outside_the_roots_and_lists_them(client, staff_user, roots):
    allowed, outside = roots
    client.force_login(staff_user)
    form = client.get(reverse("gallery-reset")).content.decode()
    assert str(allowed.resolve()) in form and "IMAGINAITION_IMPORT_ROOTS" in form
    page = client.post(reverse("gallery-reset"), {"folder": str(outside)}).content.decode()
    assert "outside the folders this server may import from" in page
    response = client.post(reverse("gallery-reset-start"), {"folder": str(outside), "confirm": "yes"})
    assert response.status_code == 302 and not ResetJob.objects.exists()
    with pytest.raises(ResetRefused, match="outside the folders"):
        reset_start(folder=str(outside), recursive=True, user=staff_user)


@pytest.mark.django_db
def test_a_queued_reset_whose_folder_left_the_roots_fails_and_deletes_nothing(roots, settings, staff_user,
                                                                              media_root):
    allowed, _ = roots
    old = make_image(name="old.png")
    job = reset_start(folder=str(allowed / "photos"), recursive=True, user=staff_user)
    settings.IMAGINAITION_IMPORT_ROOTS = [allowed / "elsewhere"]  # an administrator narrowed the roots since
    job = reset_run(job_id=job.pk)
    assert job.state == "failed" and "outside the folders" in job.error
    # It says whose setting refused it (the worker's, not the web host's that accepted it), and that
    # nothing was deleted: the phase is not "deleting the gallery".
    assert "by its own IMAGINAITION_IMPORT_ROOTS" in job.error and job.error.endswith("Nothing was deleted.")
    assert job.phase == "checking the folder" and not job.error.startswith("ResetRefused")
    assert list(Image.objects.all()) == [old]


@pytest.mark.django_db
def test_resetting_needs_its_own_permission_not_merely_staff(client, django_user_model, roots):
    allowed, _ = roots
    staff = django_user_model.objects.create_user("bob", password="s3cret-Pass!", is_staff=True)
    client.force_login(staff)
    refused = client.get(reverse("gallery-reset"))
    assert refused.status_code == 403 and "Can reset / initialize the gallery from a server folder" in \
        refused.content.decode()  # which permission, and who grants it: not only "may not do this"
    assert client.get(reverse("gallery-reset-status", args=[1])).status_code == 403
    response = client.post(reverse("gallery-reset-start"), {"folder": str(allowed / "photos"), "confirm": "yes"})
    assert response.status_code == 403 and not ResetJob.objects.exists()
    changelist = client.get(reverse("admin:gallery_image_changelist"))
    assert changelist.status_code in (200, 403) and "Reset / initialize" not in changelist.content.decode()
    assert "Reset / initialize" not in client.get(reverse("admin:index")).content.decode()

    staff.user_permissions.add(Permission.objects.get(codename="reset_gallery", content_type__app_label="gallery"))
    staff = django_user_model.objects.get(pk=staff.pk)  # permissions are cached on the instance
    client.force_login(staff)
    assert client.get(reverse("gallery-reset")).status_code == 200
    # With only this permission the image list is closed to them: admin's home page and its side bar
    # (on the reset page) link the reset, and neither says they may do nothing.
    home, reset_page = (client.get(url).content.decode() for url in (reverse("admin:index"), reverse("gallery-reset")))
    assert reverse("gallery-reset") in home and "permission to view or edit anything" not in home
    sidebar = reset_page[reset_page.index('id="nav-sidebar"'):]
    assert reverse("gallery-reset") in sidebar and "permission to view or edit anything" not in sidebar


@pytest.mark.django_db
def test_the_first_administrator_may_reset(client, django_user_model, roots):
    account = admin_ensure(username="root", password="An0ther-s3cret!")
    admin_user = django_user_model.objects.get(username=account.username)
    assert admin_user.has_perm("gallery.reset_gallery")
    client.force_login(admin_user)
    assert client.get(reverse("gallery-reset")).status_code == 200
    assert "Reset / initialize" in client.get(reverse("admin:gallery_image_changelist")).content.decode()


def test_a_relative_import_root_is_inside_the_project_wherever_a_command_runs(tmp_path):
    import subprocess
    import sys

    from django.conf import settings

    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'imaginaition_site.settings'; django.setup(); "
            "from django.conf import settings; print([str(root) for root in settings.IMAGINAITION_IMPORT_ROOTS])")
    env = {**os.environ, "IMAGINAITION_IMPORT_ROOTS": os.pathsep.join(["var/photos", "/srv/pictures"]),
           "PYTHONPATH": str(settings.BASE_DIR)}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout
    assert shown.strip() == str([str(settings.BASE_DIR / "var" / "photos"), "/srv/pictures"])


def test_an_import_root_that_is_no_folder_is_a_system_check_warning(settings, tmp_path):
    """It was found only when an import was refused, the refusal naming a file as an allowed folder."""
    from django.core.checks import run_checks

    (tmp_path / "notes.txt").write_text("not a folder")
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path, tmp_path / "notes.txt", tmp_path / "nonexistent"]
    found = [message for message in run_checks() if message.id == "gallery.W001"]
    assert [message.msg for message in found] == [
        f"IMAGINAITION_IMPORT_ROOTS names {tmp_path / 'notes.txt'}, which is not a folder (a file): nothing can be "
        "imported from it.",
        f"IMAGINAITION_IMPORT_ROOTS names {tmp_path / 'nonexistent'}, which is not a folder (nothing there): nothing "
        "can be imported from it."]
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    assert not [message for message in run_checks() if message.id == "gallery.W001"]
