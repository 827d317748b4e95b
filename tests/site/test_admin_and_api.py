from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.templatetags.static import static
from django.urls import reverse
from rest_framework.authtoken.models import Token

from gallery.models import Image
from tests.gallery.factories import add_embedding, add_mask, make_image

pytestmark = pytest.mark.django_db


def test_admin_login_page_is_served_under_the_products_name(client):
    page = client.get("/admin/login/").content.decode()
    assert "<title>Log in | ImaginAItion admin</title>" in page and "ImaginAItion administration" in page


def test_admin_login_refusal_is_said_once_in_the_title_and_as_an_alert(client):
    refused = client.post("/admin/login/?next=/admin/", {"username": "nobody", "password": "wrong-pass-1"})
    page = refused.content.decode()
    assert "<title>Error: Log in | ImaginAItion admin</title>" in page  # Django's admin prefixes it already
    alert = page.split('role="alert"', 1)[1].split("</", 1)[0]
    assert "Please enter the correct username and password" in alert


def test_admin_requires_staff(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:gallery_image_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_lists_show_thumbnails_status_labels_and_models(client, staff_user, media_root):
    image = make_image(name="kitten.png")
    add_mask(image, label="cat")
    add_embedding(image, space="content", model_key="autoencoder/v1", vector=[1 / 1024] * 1024)
    client.force_login(staff_user)

    page = client.get(reverse("admin:gallery_image_changelist")).content.decode()
    assert "kitten.png" in page and "cat" in page and "content:autoencoder/v1" in page
    assert reverse("gallery:image-thumbnail-size", args=[image.pk, 128]) in page

    for name in ("gallery_mask_changelist", "retrieval_embedding_changelist"):
        assert client.get(reverse(f"admin:{name}")).status_code == 200
    assert client.get(reverse("admin:gallery_image_change", args=[image.pk])).status_code == 200
    filtered = client.get(reverse("admin:gallery_image_changelist") + "?masks__label=dog").content.decode()
    assert "kitten.png" not in filtered


def test_admin_offers_no_task_schedules_and_no_save_for_vectors(client, staff_user, media_root):
    """A schedule ran any function a staff member typed (func "os.system") in a worker; an embedding's
    Save said "changed successfully" while every field is read-only."""
    from retrieval.models import Embedding

    client.force_login(staff_user)
    index = client.get(reverse("admin:index")).content.decode()
    assert "/admin/django_q/schedule/" not in index and "/admin/django_q/failure/" in index
    assert client.get("/admin/django_q/schedule/add/").status_code == 404
    image = make_image(name="vectors.png")
    add_embedding(image, space="content", model_key="autoencoder/v1", vector=[1 / 1024] * 1024)
    embedding = Embedding.objects.get(image=image)
    url = reverse("admin:retrieval_embedding_change", args=[embedding.pk])
    page = client.get(url).content.decode()
    assert client.get(url).status_code == 200 and 'name="_save"' not in page
    assert client.post(url, {"model_key": "hacked", "_save": "Save"}).status_code == 403
    embedding.refresh_from_db()
    assert embedding.model_key == "autoencoder/v1"


def test_resubmitting_tasks_needs_more_than_the_permission_to_view_them(client, staff_user, django_user_model):
    """A staff member who could only view the task lists re-ran every task, doubling the queue each time."""
    from django.contrib.auth.models import Group, Permission
    from django.utils import timezone
    from django_q.models import OrmQ, Success

    now = timezone.now()
    Success.objects.create(id="a" * 32, name="images-1", func="retrieval.tasks.worker_ping", started=now,
                           stopped=now, success=True)
    viewer = django_user_model.objects.create_user("task-viewer", password="Viewer-pass-123", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_success"))
    changelist = "/admin/django_q/success/"
    for who, offered in ((viewer, False), (staff_user, True)):
        client.force_login(who)
        page = client.get(changelist)
        assert page.status_code == 200 and ('value="resubmit_task"' in page.content.decode()) is offered
    client.force_login(viewer)
    client.post(changelist, {"action": "resubmit_task", "_selected_action": ["a" * 32], "index": 0})
    assert OrmQ.objects.count() == 0


def test_thumbnail_is_generated_once_and_private_by_default(client, user, media_root):
    image = make_image(size=(600, 300))
    url = reverse("gallery:image-thumbnail", args=[image.pk])
    assert client.get(url).status_code == 404  # anonymous: the gallery is private by default
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/webp"
    cached = list((media_root / "thumbs").rglob("*"))
    cached = [path for path in cached if path.is_file()]
    assert [path.suffix for path in cached] == [".webp"]  # one file, no partial write left beside it
    mtime = cached[0].stat().st_mtime_ns
    assert client.get(url).content == response.content == cached[0].read_bytes()
    assert cached[0].stat().st_mtime_ns == mtime


def test_api_root_status_and_schema(client, user, settings):
    root = client.get("/api/")
    assert root.status_code == 200 and "status" in root.json()
    # The status shows counts and missing files: read like the gallery (private by default).
    assert client.get("/api/status/").status_code == 401
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    assert client.get("/api/status/").status_code == 200
    settings.IMAGINAITION_PUBLIC_GALLERY = False
    client.force_login(user)
    status = client.get("/api/status/").json()
    assert status["profile"] in ("standard", "offline")
    assert status["pgvector_version"].startswith("0.")
    assert set(status["images"]) == {"pending", "ready", "failed"}
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_the_api_pages_a_browser_opens_have_a_language_plain_names_and_real_breadcrumbs(client, user):
    """/api/docs/ and DRF's browsable pages (an endpoint opened in a browser): a page language (WCAG 3.1.1),
    names without the classes' "Api", and breadcrumbs that lead to endpoints, not to the catch-all 404."""
    client.force_login(user)
    docs = client.get("/api/docs/").content.decode()
    assert '<html lang="en">' in docs
    for path, title in [("/api/", "API root"), ("/api/search/", "Search"), ("/api/images/", "Images")]:
        page = client.get(path, HTTP_ACCEPT="text/html").content.decode()
        assert '<html lang="en">' in page, path
        assert f"<title>{title} – Django REST framework</title>" in page, path
        crumbs = page[page.index('class="breadcrumb"'):page.index("</ul>", page.index('class="breadcrumb"'))]
        assert "No Such Endpoint" not in crumbs and " Api" not in crumbs, (path, crumbs)
        assert ">API root</a>" in crumbs or path == "/api/", (path, crumbs)


def test_the_api_pages_a_browser_opens_are_laid_out_at_a_phones_width(client, user, media_root):
    """Without a viewport tag a phone lays a page out 980 px wide and shrinks it (the browser check:
    tests/pages/test_accessibility.py)."""
    image = make_image()
    client.force_login(user)
    for path in ("/api/", f"/api/images/{image.pk}/", "/api/status/", "/api/search/"):
        page = client.get(path, HTTP_ACCEPT="text/html").content.decode()
        assert page.count('<meta name="viewport" content="width=device-width, initial-scale=1">') == 1, path


def test_status_counts_images_by_status(client, user, media_root):
    client.force_login(user)
    make_image(status="pending")
    make_image(status="failed")
    make_image()
    assert client.get("/api/status/").json()["images"] == {"pending": 1, "ready": 1, "failed": 1}
    assert Image.objects.count() == 3


def test_ensure_admin_generates_a_password_once(capsys, django_user_model, monkeypatch):
    monkeypatch.delenv("IMAGINAITION_ADMIN_PASSWORD", raising=False)
    call_command("ensure_admin")
    out = capsys.readouterr().out
    password = out.split("password: ")[1].split()[0]
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password) and len(password) >= 12
    call_command("ensure_admin")
    assert "already exists" in capsys.readouterr().out
    assert django_user_model.objects.filter(is_superuser=True).count() == 1


def test_ensure_admin_takes_the_password_from_the_environment(capsys, django_user_model, monkeypatch):
    monkeypatch.setenv("IMAGINAITION_ADMIN_PASSWORD", "correct-horse-battery")
    monkeypatch.setenv("IMAGINAITION_ADMIN_USERNAME", "")  # set but blank: the default, as every setting
    call_command("ensure_admin")
    assert "correct-horse-battery" not in capsys.readouterr().out
    assert django_user_model.objects.get(username="admin").check_password("correct-horse-battery")


@pytest.mark.parametrize(("username", "password", "message"), [
    ("admin", "1", "too short"), ("admin", "password123", "too common"), ("admin", "83920174655", "entirely numeric"),
    ("bad name!", "correct-horse-battery", "Enter a valid username"),
])
def test_ensure_admin_refuses_what_any_other_account_would_be_refused(monkeypatch, django_user_model, username,
                                                                      password, message):
    monkeypatch.setenv("IMAGINAITION_ADMIN_USERNAME", username)
    monkeypatch.setenv("IMAGINAITION_ADMIN_PASSWORD", password)
    with pytest.raises(CommandError, match=message):
        call_command("ensure_admin")
    assert not django_user_model.objects.exists()


def test_admin_search_similar_from_an_image_page(client, staff_user, django_user_model, media_root, settings,
                                                 tmp_path):
    import numpy as np

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        image = make_image(name=f"p{i}.png")
        semantic = rng.normal(size=384)
        add_embedding(image, space="semantic", model_key="offline/effnet-lite0+minilm",
                      vector=semantic / np.linalg.norm(semantic))
        content = np.abs(rng.normal(size=1024))
        add_embedding(image, space="content", model_key="autoencoder/v1", vector=content / content.sum())
        images.append(image)
    client.force_login(staff_user)
    change_page = client.get(reverse("admin:gallery_image_change", args=[images[0].pk])).content.decode()
    similar_url = reverse("admin:gallery_image_similar", args=[images[0].pk])
    assert similar_url in change_page
    page = client.get(similar_url).content.decode()
    assert "p1.png" in page and "p3.png" in page and 'class="both"' in page
    assert page.count('<li class="both">') == 3  # 3 other images, k=50: each index returns all of them
    assert page.count("found by both") == 3  # said in words too, not by the frame's colour alone
    assert page.count("<h1") == 1  # the page's own heading, not admin's title above it again
    pending = make_image(status="pending")
    response = client.get(reverse("admin:gallery_image_similar", args=[pending.pk]))
    assert response.status_code == 302  # back to the image page with the reason

    # Staff without the view permission get no image admin pages, this one included.
    staff_only = django_user_model.objects.create_user("staffy", password="s3cret-Pass!", is_staff=True)
    client.force_login(staff_only)
    assert client.get(reverse("admin:gallery_image_change", args=[images[0].pk])).status_code == 403
    assert client.get(similar_url).status_code == 403


def _png_with_a_script_in_a_text_chunk() -> bytes:
    import io

    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "<html><script>alert(document.cookie)</script></html>")
    buffer = io.BytesIO()
    PILImage.new("RGB", (40, 40), (10, 200, 10)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize("name, served_as", [("poc.html", "poc.png"), ("poc.svg", "poc.png"),
                                             ("holiday.PNG", "holiday.PNG"), ("noname", "noname.png"),
                                             (".png", "image.png"), (".profile", ".profile.png")])
def test_an_image_file_is_served_as_its_decoded_format_whatever_its_name(client, user, media_root, name, served_as):

    client.force_login(user)
    created = client.post(reverse("api-images"), {"file": SimpleUploadedFile(name, _png_with_a_script_in_a_text_chunk())})
    assert created.status_code == 201
    response = client.get(reverse("gallery:image-file", args=[created.json()["id"]]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == f'inline; filename="{served_as}"'
    assert "sandbox" in response["Content-Security-Policy"] and response["X-Content-Type-Options"] == "nosniff"


def test_only_the_uploader_or_a_user_allowed_to_delete_images_deletes_one_through_the_api(
        client, user, django_user_model, media_root):
    from django.contrib.auth.models import Group, Permission

    client.force_login(user)
    mine = client.post(reverse("api-images"), {"file": SimpleUploadedFile("a.png", _png_with_a_script_in_a_text_chunk())})
    image_id = mine.json()["id"]
    others = make_image(name="someone-elses.png").pk
    bob = django_user_model.objects.create_user("bob", password="s3cret-Pass!")
    carol = django_user_model.objects.create_user("carol", password="s3cret-Pass!", is_staff=True)

    for outsider in (bob, carol):  # carol is staff, but not allowed to delete images (nor is she in admin)
        client.force_login(outsider)
        refused = client.delete(reverse("api-image", args=[image_id]))
        assert refused.status_code == 403 and "delete" in refused.json()["detail"]
    assert Image.objects.filter(pk=image_id).exists()

    client.force_login(user)
    assert client.delete(reverse("api-image", args=[others])).status_code == 403
    assert client.delete(reverse("api-image", args=[image_id])).status_code == 204
    carol.user_permissions.add(Permission.objects.get(codename="delete_image"))
    client.force_login(carol)
    assert client.delete(reverse("api-image", args=[others])).status_code == 204
    assert not Image.objects.exists()


def test_admin_deletes_an_image_with_its_file_and_tells_the_indexes(client, staff_user, media_root,
                                                                    django_capture_on_commit_callbacks):
    from gallery import events

    kept, deleted = make_image(name="kept.png"), make_image(name="gone.png", color=(1, 2, 3))
    single = make_image(name="single.png", color=(9, 9, 9))
    told: list[int] = []

    def listener(sender, image_ids, **kwargs):
        told.extend(image_ids)

    events.images_deleted.connect(listener)
    client.force_login(staff_user)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(reverse("admin:gallery_image_changelist"),
                                   {"action": "delete_selected", "_selected_action": [deleted.pk], "post": "yes"})
            assert response.status_code == 302
            response = client.post(reverse("admin:gallery_image_delete", args=[single.pk]), {"post": "yes"})
            assert response.status_code == 302
    finally:
        events.images_deleted.disconnect(listener)
    assert sorted(told) == sorted([deleted.pk, single.pk])
    assert list(Image.objects.values_list("pk", flat=True)) == [kept.pk]
    assert [p.relative_to(media_root).as_posix() for p in media_root.rglob("*.png")] == [kept.file.name]


def test_admin_offers_no_add_form_for_what_the_pipeline_makes_and_links_the_served_file(client, staff_user, media_root):
    image = make_image(name="kitten.png")
    client.force_login(staff_user)
    for name in ("gallery_image_add", "gallery_mask_add", "retrieval_embedding_add"):
        assert client.get(reverse(f"admin:{name}")).status_code == 403, name
    page = client.get(reverse("admin:gallery_image_change", args=[image.pk])).content.decode()
    file_url = reverse("gallery:image-file", args=[image.pk])
    assert f'href="{file_url}"' in page and client.get(file_url).status_code == 200


def test_accounts_offer_sign_in_and_password_change_but_no_mailed_reset(client, user):
    # The service sends no mail: a "we emailed you" page would be a lie.
    assert client.get("/accounts/password_reset/").status_code == 404
    assert client.get(reverse("login")).status_code == 200
    assert client.get(reverse("password_change")).status_code == 302  # signed-in only
    client.force_login(user)
    page = client.get(reverse("pages:home")).content.decode()
    assert f'href="{reverse("password_change")}"' in page  # the site's menu links it
    form = client.get(reverse("password_change"))
    assert form.status_code == 200 and "ImaginAItion admin" not in form.content.decode()  # the site's page
    done = client.post(reverse("password_change"), {"old_password": "s3cret-Pass!", "new_password1": "N3w-and-l0ng!",
                                                     "new_password2": "N3w-and-l0ng!"}, follow=True)
    assert "<h1>Password changed</h1>" in done.content.decode()
    user.refresh_from_db()
    assert user.check_password("N3w-and-l0ng!")


def test_a_new_password_ends_the_accounts_api_token_and_nothing_else_does(client, user, admin_client):
    from rest_framework.authtoken.models import Token

    def token_works(key: str) -> bool:
        return client.get(reverse("api-images"), HTTP_AUTHORIZATION=f"Token {key}").status_code == 200

    key = Token.objects.create(user=user).key
    user.first_name = "Ada"
    user.save()  # any other change keeps it
    user.set_password("s3cret-Pass!")
    user.save()  # the same password again (Django re-hashes a password so when its hasher's cost rises)
    assert token_works(key)

    client.force_login(user)
    changed = client.post(reverse("password_change"), {"old_password": "s3cret-Pass!", "new_password1": "N3w-and-l0ng!",
                                                       "new_password2": "N3w-and-l0ng!"})
    assert changed.status_code == 302
    client.logout()
    assert not token_works(key) and not Token.objects.filter(user=user).exists()

    key = Token.objects.create(user=user).key  # "changed" to the same password on the page: it ends too
    user.refresh_from_db()  # (the session is signed with the new password's hash)
    client.force_login(user)
    again = client.post(reverse("password_change"), {"old_password": "N3w-and-l0ng!", "new_password1": "N3w-and-l0ng!",
                                                     "new_password2": "N3w-and-l0ng!"})
    assert again.status_code == 302 and not token_works(key)
    client.logout()

    key = Token.objects.create(user=user).key  # an administrator sets a new password in admin: the same
    response = admin_client.post(reverse("admin:auth_user_password_change", args=[user.pk]),
                                 {"password1": "An0ther-l0ng-one", "password2": "An0ther-l0ng-one", "usable_password": "true"})
    assert response.status_code == 302 and not token_works(key)


def test_the_file_links_the_api_hands_out_open_with_the_api_token(client, user, media_root):
    from rest_framework.authtoken.models import Token

    image = make_image(name="kitten.png")
    mask = add_mask(image)
    token = Token.objects.create(user=user).key
    body = client.get(reverse("api-image", args=[image.pk]), HTTP_AUTHORIZATION=f"Token {token}").json()
    urls = [body["file_url"], body["thumbnail_url"], *(row["mask_url"] for row in body["masks"])]
    assert len(urls) == 3 and str(mask.pk) in urls[2]
    for url in urls:
        assert client.get(url).status_code == 404, url  # nothing without credentials: the gallery is private
        response = client.get(url, HTTP_AUTHORIZATION=f"Token {token}")
        assert response.status_code == 200 and response["Content-Type"].startswith("image/"), url
        wrong = client.get(url, HTTP_AUTHORIZATION="Token not-a-token")
        assert wrong.status_code == 401 and wrong["WWW-Authenticate"] == "Token", url  # as the API says it
    # As on the API, a token wins over a session: a wrong one beside a session cookie was served (200).
    client.force_login(user)
    for url in urls:
        assert client.get(url).status_code == 200, url
        assert client.get(url, HTTP_AUTHORIZATION="Token not-a-token").status_code == 401, url
    assert client.get(reverse("api-image", args=[image.pk]), HTTP_AUTHORIZATION="Token not-a-token").status_code == 401


def test_an_api_path_without_its_final_slash_reaches_the_endpoint_and_an_unknown_one_is_a_json_404(
        client, user, media_root):
    from rest_framework.authtoken.models import Token

    from tests.gallery.factories import png_bytes

    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}
    # Django's APPEND_SLASH would answer with a 301 that clients follow as a GET: the upload was lost.
    upload = client.post("/api/images", {"file": SimpleUploadedFile("red.png", png_bytes())}, **token)
    assert upload.status_code == 201 and Image.objects.filter(pk=upload.json()["id"]).exists()
    assert client.get(f"/api/images/{upload.json()['id']}", **token).json()["id"] == upload.json()["id"]
    for method in ("get", "post"):  # the API's root too (a 301 as HTML, and a POST followed as a GET)
        root = getattr(client, method)("/api", **token)
        assert root.status_code == (200 if method == "get" else 405) and root["Content-Type"] == "application/json"
    for method in ("get", "post", "delete"):
        response = getattr(client, method)("/api/no-such-thing/", **token)
        assert response.status_code == 404
        assert response.json() == {"detail": "There is no API endpoint at /api/no-such-thing/; GET /api/ lists them."}
    image_id = upload.json()["id"]
    assert client.get("/api/images/abc/", **token).json() == {"detail": "No such image."}
    deeper = client.get(f"/api/images/{image_id}/masks/", **token)  # the image exists: it said "No such image."
    assert deeper.status_code == 404 and deeper.json()["detail"].startswith(
        f"There is no API endpoint at /api/images/{image_id}/masks/")
    assert client.get("/no-such-page").status_code == 404  # pages keep the site's own 404


def test_a_token_wins_over_a_session_cookie_and_a_request_without_either_is_told_401(user, media_root):
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from tests.gallery.factories import png_bytes

    key = Token.objects.create(user=user).key
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)  # a script running where the user is also signed in
    upload = {"file": SimpleUploadedFile("red.png", png_bytes())}
    assert browser.post("/api/images/", upload).status_code == 403  # the session alone: no CSRF token
    for keyword in ("Token", "Bearer", "token"):
        upload = {"file": SimpleUploadedFile(f"{keyword}.png", png_bytes())}
        assert browser.post("/api/images/", upload, HTTP_AUTHORIZATION=f"{keyword} {key}").status_code == 201, keyword

    anonymous = Client().get("/api/images/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    assert "drf_create_token" in anonymous.json()["detail"]  # says how to authenticate
    wrong = Client().get("/api/images/", HTTP_AUTHORIZATION=f"Token {key} extra")
    assert wrong.status_code == 401 and "Authorization: Token <key>" in wrong.json()["detail"]


def test_the_image_list_takes_a_page_size_within_its_limit(client, user, media_root):
    images = [make_image(name=f"{i}.png") for i in range(3)]
    client.force_login(user)
    page = client.get(reverse("api-images"), {"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and "page_size=2" in page["next"]
    assert [row["id"] for row in page["results"]] == [images[2].pk, images[1].pk]  # newest first
    assert len(client.get(reverse("api-images"), {"page_size": 10_000}).json()["results"]) == 3  # capped, not refused
    assert len(client.get(reverse("api-images"), {"page_size": "9" * 5000}).json()["results"]) == 3  # capped too
    for unusable in ("0", "-5", "abc", "1e3", "²"):
        refused = client.get(reverse("api-images"), {"page_size": unusable})
        assert refused.status_code == 400 and "at least 1" in refused.json()["page_size"][0], unusable


def test_paging_through_the_image_list_sees_each_image_once_while_images_are_added(client, user, media_root):
    """Newest first, each image added while a client paged pushed the pages down: it saw the last of one page
    again at the top of the next."""
    before = [make_image(name=f"{i}.png", color=(i * 30, 1, 1)).pk for i in range(5)]
    client.force_login(user)
    first = client.get(reverse("api-images"), {"page_size": 2}).json()
    assert f"upto={max(before)}" in first["next"] and first["count"] == 5
    seen = [row["id"] for row in first["results"]]
    make_image(name="new-1.png", color=(1, 200, 1))
    make_image(name="new-2.png", color=(1, 1, 200))
    following = first["next"]
    while following:
        page = client.get(following).json()
        seen += [row["id"] for row in page["results"]]
        following = page["next"]
    assert seen == sorted(before, reverse=True)  # each once, in the order of the first page's list
    back = client.get(page["previous"]).json()
    assert f"upto={max(before)}" in page["previous"] and back["count"] == 5
    fresh = client.get(reverse("api-images"), {"page_size": 2}).json()
    assert fresh["count"] == 7 and fresh["results"][0]["original_name"] == "new-2.png"  # a new listing sees them
    assert client.get(reverse("api-images"), {"upto": "0"}).status_code == 400


def test_paging_through_the_image_list_misses_no_image_while_images_are_deleted(client, user, media_root):
    """The links named page numbers: a deletion on a page already seen moved an image of the next page onto
    it (never sent), and a link to the last page answered 404 once the list had a page fewer."""
    ids = [make_image(name=f"{i}.png", color=(i * 20, 2, 2)).pk for i in range(9)]  # newest first: ids[::-1]
    client.force_login(user)
    first = client.get(reverse("api-images"), {"page_size": 4}).json()
    seen = [row["id"] for row in first["results"]]
    assert seen == ids[:4:-1] and f"before={ids[5]}" in first["next"] and "page=" not in first["next"]
    Image.objects.filter(pk__in=[ids[8], ids[7]]).delete()  # from the page seen
    second = client.get(first["next"]).json()
    seen += [row["id"] for row in second["results"]]
    Image.objects.filter(pk=ids[4]).delete()  # the page just seen ends on it
    third = client.get(second["next"]).json()
    seen += [row["id"] for row in third["results"]]
    assert seen == ids[::-1] and third["next"] is None and third["count"] == 6
    back = client.get(third["previous"]).json()  # the 4 images just newer than the page's
    assert [row["id"] for row in back["results"]] == [ids[5], ids[3], ids[2], ids[1]]
    top = client.get(back["previous"]).json()
    assert [row["id"] for row in top["results"]] == [ids[6]] and top["previous"] is None
    assert f"before={ids[6]}" in top["next"] and f"upto={ids[8]}" in top["next"]

    numbered = client.get(reverse("api-images"), {"page_size": 4, "page": 2}).json()  # a page by its number too
    assert [row["id"] for row in numbered["results"]] == [ids[1], ids[0]] and numbered["next"] is None
    assert f"after={ids[1]}" in numbered["previous"]
    gone = client.get(reverse("api-images"), {"page_size": 4, "before": ids[0]}).json()
    assert gone == {"count": 6, "next": None, "previous": gone["previous"], "results": []}
    assert f"after={ids[0] - 1}" in gone["previous"]  # an edge past the list: an empty page, never a 404
    both = client.get(reverse("api-images"), {"page": 2, "before": ids[3]})
    assert both.status_code == 400 and "one of page, before and after" in both.json()["before"][0]


def test_the_image_list_refuses_a_parameter_it_does_not_read_and_labels_beyond_their_limit(client, user, media_root):
    """?labels=cat (the search API's spelling) returned the whole gallery, as if filtered."""
    add_mask(make_image(name="a.png"), label="cat")
    client.force_login(user)
    for typo in ({"labels": "envelope"}, {"status": "failed"}, {"ordering": "created_at"}):
        refused = client.get(reverse("api-images"), typo)
        name = next(iter(typo))
        assert refused.status_code == 400 and refused.json() == {
            name: ["Unknown field; the fields are: label, upto, before, after, page, page_size, format."]}
    assert client.get(reverse("api-images"), {"label": "cat", "page": 1, "page_size": 5,
                                              "format": "json"}).status_code == 200
    twice = client.get(reverse("api-images") + "?page=1&page=2")  # page 2 was answered
    assert twice.status_code == 400 and twice.json() == {"page": ["Send this field once (2 values were sent)."]}
    too_long = client.get(reverse("api-images"), {"label": ",".join(f"label{i}" for i in range(200))})
    assert too_long.status_code == 400 and "1000 characters" in too_long.json()["label"][0]


def test_two_files_in_one_field_are_refused_rather_than_one_dropped(client, user, media_root):
    from tests.gallery.factories import png_bytes

    client.force_login(user)
    two = [SimpleUploadedFile("a.png", png_bytes()), SimpleUploadedFile("b.png", png_bytes())]
    response = client.post(reverse("api-images"), {"file": two})
    assert response.status_code == 400
    assert response.json() == {"file": ["Send one file in this field (2 were sent): one picture per request."]}
    assert not Image.objects.exists()
    two = [SimpleUploadedFile("a.png", png_bytes()), SimpleUploadedFile("b.png", png_bytes())]
    assert "2 were sent" in str(client.post(reverse("api-search"), {"image": two}).json())


@pytest.mark.parametrize("url", ["/accounts/login/", "/api/images/", "/"])
def test_a_body_over_the_limit_is_refused_before_anything_reads_it(client, settings, url, media_root):
    # The CSRF check reads a whole form, files to disk, before a view could look at a file's size:
    # anyone could make the server store a body of any size. Now a 413 comes first, signed in or not.
    settings.IMAGINAITION_MAX_UPLOAD_BYTES = 1000
    body = {"file": SimpleUploadedFile("big.png", b"\0" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 5000))}
    refused = client.post(url, body)
    assert refused.status_code == 413 and b"the limit is" in refused.content
    if url.startswith("/api/"):
        assert refused["Content-Type"] == "application/json" and "1,000 bytes" in refused.json()["detail"]
    else:  # a page in the site's layout, not a bare text answer with no way back
        assert "<title>File too large · ImaginAItion</title>" in refused.content.decode()
    assert not Image.objects.exists()


@pytest.mark.parametrize("url", ["/api/images/", "/gallery/add/"])
def test_a_body_sent_in_chunks_without_a_length_is_told_to_send_its_length(client, user, url, media_root):
    """Django reads a body only up to its Content-Length: a chunked upload (curl -H "Transfer-Encoding: chunked")
    was answered "No file was submitted." of a valid picture."""
    client.force_login(user)
    answer = client.generic("POST", url, b"--x\r\n", content_type="multipart/form-data; boundary=x",
                            HTTP_TRANSFER_ENCODING="chunked", CONTENT_LENGTH="")
    assert answer.status_code == 411
    said = answer.json()["detail"] if url.startswith("/api/") else answer.content.decode()
    assert "sent in chunks without a Content-Length" in said and "send it with its length" in said
    assert not Image.objects.exists()


def test_a_body_without_a_length_stops_being_read_at_the_limit(settings):
    from django.core.files.uploadhandler import StopUpload

    from imaginaition_site.middleware import UploadLimitHandler, request_body_limit

    settings.IMAGINAITION_MAX_UPLOAD_BYTES = 1000
    handler = UploadLimitHandler()
    chunk = b"\0" * 65536
    with pytest.raises(StopUpload):
        for start in range(0, request_body_limit() + 2 * len(chunk), len(chunk)):
            assert handler.receive_data_chunk(chunk, start) == chunk  # passed on to the next handler
    assert request_body_limit() < handler.received <= request_body_limit() + len(chunk)


def test_every_kind_of_page_names_the_sites_icon_and_favicon_ico_leads_to_it(client, staff_user):
    icon = f'<link rel="icon" href="{static("favicon.svg")}" type="image/svg+xml">'
    assert "<svg" in Path(finders.find("favicon.svg")).read_text()
    assert icon in client.get("/no-such-page").content.decode()  # the error pages' own layout
    client.force_login(staff_user)
    for url in (reverse("pages:home"), reverse("admin:index"), "/api/images/"):
        assert icon in client.get(url, headers={"accept": "text/html"}).content.decode(), url
    answer = client.get("/favicon.ico")  # asked for by a browser showing a bare file: not a 404
    assert answer.status_code == 302 and answer["Location"] == static("favicon.svg")


def test_admin_pages_wrap_long_names(client, staff_user):
    client.force_login(staff_user)
    page = client.get(reverse("admin:index")).content.decode()
    assert f'<link rel="stylesheet" href="{static("admin_site.css")}">' in page  # a file: the CSP has no inline style
    rules = Path(finders.find("admin_site.css")).read_text()
    assert "#result_list td, .breadcrumbs" in rules and "overflow-wrap: anywhere" in rules
    assert "Site administration" in page  # still Django's admin layout around it


def test_only_superusers_see_or_make_api_tokens_in_admin(client, django_user_model):
    """A token acts as its user: staff with only "Can view Token" read every key (a superuser's included),
    and "Can add Token" made a key for anyone; either let them act as any account."""
    boss = django_user_model.objects.create_superuser("boss", password="B0ss-pass-long!")
    key = Token.objects.create(user=boss).key
    staff_user = django_user_model.objects.create_user("keeper", password="K33per-pass!", is_staff=True)
    staff_user.user_permissions.add(*Permission.objects.filter(codename__endswith="_tokenproxy"))
    client.force_login(staff_user)
    listing = reverse("admin:authtoken_tokenproxy_changelist")
    assert client.get(listing).status_code == 403
    added = client.post(reverse("admin:authtoken_tokenproxy_add"), {"user": staff_user.pk})
    assert added.status_code == 403 and not Token.objects.filter(user=staff_user).exists()
    assert "authtoken" not in client.get(reverse("admin:index")).content.decode()  # not offered either
    client.force_login(boss)
    assert key in client.get(listing).content.decode()
    client.post(reverse("admin:authtoken_tokenproxy_add"), {"user": staff_user.pk})
    assert Token.objects.filter(user=staff_user).exists()  # a superuser still makes them


def test_deleting_a_user_in_admin_shows_no_api_key_and_says_their_images_stay(client, django_user_model,
                                                                               media_root):
    """Staff who may only delete users read every account's key on the confirmation page ("Token: 5289db…")."""
    bob = django_user_model.objects.create_user("bob", password="B0b-pass-long!")
    alice = django_user_model.objects.create_user("alice", password="Al1ce-pass-long!")
    keys = [Token.objects.create(user=bob).key, Token.objects.create(user=alice).key]
    Image.objects.filter(pk=make_image(name="hers.png").pk).update(added_by=alice)
    remover = django_user_model.objects.create_user("remover", password="R3mover-pass!", is_staff=True)
    remover.user_permissions.add(*Permission.objects.filter(codename__in=("delete_user", "view_user")))
    client.force_login(remover)
    for user in (bob, alice):
        page = client.get(reverse("admin:auth_user_delete", args=[user.pk])).content.decode()
        assert "Token: (the account&#x27;s API key)" in page and not any(key in page for key in keys), user
    page = client.get(reverse("admin:auth_user_delete", args=[alice.pk])).content.decode()
    assert "The 1 image added by this account stays in the gallery" in page
    assert f'href="/admin/gallery/image/?added_by__id__in={alice.pk}"' in page
    action = client.post(reverse("admin:auth_user_changelist"), {"action": "delete_selected",
                                                                  "_selected_action": [bob.pk, alice.pk]})
    assert action.status_code == 200 and not any(key in action.content.decode() for key in keys)
    assert "The 1 image added by these accounts stays in the gallery" in action.content.decode()  # several at once
    assert client.post(reverse("admin:auth_user_delete", args=[alice.pk]), {"post": "yes"}).status_code == 302
    assert not django_user_model.objects.filter(pk=alice.pk).exists() and not Token.objects.filter(key=keys[1])


def test_staff_who_may_change_users_manage_ordinary_accounts_only_and_never_permissions(client, django_user_model):
    """Staff holding "Can change user" set the admin's password and signed in as the admin, ticked superuser
    status on their own account, deleted superusers and gave themselves any permission through a group."""
    boss = django_user_model.objects.create_superuser("boss", password="B0ss-pass-long!")
    alice = django_user_model.objects.create_user("alice", password="Al1ce-pass-long!")
    keeper = django_user_model.objects.create_user("keeper", password="K33per-pass!", is_staff=True)
    keeper.user_permissions.add(*Permission.objects.filter(content_type__app_label="auth").exclude(
        codename__endswith="_permission"))
    group = Group.objects.create(name="clerks")
    keeper.groups.add(group)
    client.force_login(keeper)
    new_password = {"password1": "Hijacked-2026-xyz", "password2": "Hijacked-2026-xyz", "usable_password": "true"}
    for account in (boss, keeper):
        assert client.get(reverse("admin:auth_user_password_change", args=[account.pk])).status_code == 403
        assert client.post(reverse("admin:auth_user_password_change", args=[account.pk]),
                           new_password).status_code == 403
        assert client.post(reverse("admin:auth_user_change", args=[account.pk]), {
            "username": account.username, "is_active": "on", "is_staff": "on", "is_superuser": "on",
            "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"}).status_code == 403
        assert client.post(reverse("admin:auth_user_delete", args=[account.pk]), {"post": "yes"}).status_code == 403
    bulk = client.post(reverse("admin:auth_user_changelist"), {"action": "delete_selected", "post": "yes",
                                                                "_selected_action": [boss.pk, alice.pk]})
    assert bulk.status_code == 403 and django_user_model.objects.filter(pk__in=[boss.pk, alice.pk]).count() == 2
    everything = list(Permission.objects.values_list("pk", flat=True))
    changed = client.post(reverse("admin:auth_user_change", args=[alice.pk]), {
        "username": "alice", "email": "alice@example.org", "is_active": "on", "is_staff": "on",
        "is_superuser": "on", "user_permissions": everything, "groups": [group.pk],
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    assert changed.status_code == 302
    alice.refresh_from_db()
    assert alice.email == "alice@example.org"  # an ordinary account's details are theirs to change
    assert not (alice.is_staff or alice.is_superuser or alice.user_permissions.exists() or alice.groups.exists())
    assert client.post(reverse("admin:auth_user_password_change", args=[alice.pk]), new_password).status_code == 302
    assert client.post(reverse("admin:auth_group_change", args=[group.pk]),
                       {"name": "clerks", "permissions": everything}).status_code == 403
    assert not group.permissions.exists()
    keeper.refresh_from_db()
    boss.refresh_from_db()
    assert not keeper.is_superuser and boss.check_password("B0ss-pass-long!")
    client.force_login(boss)  # a superuser still does all of it
    assert client.post(reverse("admin:auth_user_change", args=[alice.pk]), {
        "username": "alice", "is_active": "on", "is_staff": "on", "user_permissions": everything[:1],
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"}).status_code == 302
    alice.refresh_from_db()
    assert alice.is_staff and alice.user_permissions.count() == 1
    assert client.post(reverse("admin:auth_user_delete", args=[keeper.pk]), {"post": "yes"}).status_code == 302


def test_a_refusal_is_logged_on_one_line_and_a_server_error_with_its_traceback(client, django_user_model, caplog,
                                                                                monkeypatch):
    """Each 403 (a staff page without its permission) wrote a 30-line traceback to the log."""
    client.force_login(django_user_model.objects.create_user("clerk", password="Cl3rk-pass!", is_staff=True))
    with caplog.at_level("WARNING", logger="django.request"):
        assert client.get(reverse("gallery-reset")).status_code == 403  # no reset permission
        client.raise_request_exception = False
        monkeypatch.setattr("retrieval.views.preferences_get", lambda **kwargs: 1 / 0)
        assert client.get(reverse("pages:preferences")).status_code == 500
    refused, failed = [r for r in caplog.records if r.name == "django.request"]
    assert refused.status_code == 403 and refused.exc_info is None
    assert failed.status_code == 500 and failed.exc_info is not None and failed.exc_info[0] is ZeroDivisionError


def test_operations_that_take_no_body_refuse_a_field_rather_than_ignore_it(client, user, media_root):
    """README: a body field an operation does not have is a 400 listing its fields; a DELETE sent
    {"dry_run": true} deleted the image."""
    image = make_image(status="failed")
    Image.objects.filter(pk=image.pk).update(added_by=user)
    client.force_login(user)
    detail, retry = f"/api/images/{image.pk}/", f"/api/images/{image.pk}/retry/"
    refused = client.delete(detail, {"dry_run": True}, content_type="application/json")
    assert refused.status_code == 400 and refused.json() == {"dry_run": ["This operation takes no fields; send none."]}
    assert Image.objects.filter(pk=image.pk).exists()
    assert client.post(retry, {"masks_only": True}, content_type="application/json").status_code == 400
    assert client.post(retry, "zz", content_type="text/plain").status_code == 415
    assert client.post(retry, "[1]", content_type="application/json").status_code == 400
    check = client.post("/api/status/worker-check/", {"cluster": "x"}, content_type="application/json")
    assert check.status_code == 400
    assert Image.objects.get(pk=image.pk).status == "failed"  # nothing was done
    assert client.post(retry).status_code == 200 and Image.objects.get(pk=image.pk).status == "pending"
    assert client.delete(detail).status_code == 204 and not Image.objects.filter(pk=image.pk).exists()


def test_links_to_files_and_pages_do_not_carry_the_apis_format_parameter(client, user, media_root):
    """DRF's reverse carries ?format=json over to every link it makes: the files' and the docs page's too
    (/api/docs/?format=json is a 406)."""
    image = make_image()
    add_mask(image, label="cat")
    client.force_login(user)
    listed = client.get("/api/images/", {"format": "json"}).json()["results"][0]
    detail = client.get(f"/api/images/{image.pk}/", {"format": "json"}).json()
    links = [listed["file_url"], listed["thumbnail_url"], detail["file_url"], detail["masks"][0]["mask_url"]]
    assert all(link.startswith("http://testserver/") and "format=" not in link for link in links), links
    root = client.get("/api/", {"format": "json"}).json()
    assert root["docs"] == "http://testserver/api/docs/" and client.get(root["docs"]).status_code == 200


def test_an_original_is_revalidated_by_its_sha256_and_a_deleted_one_is_gone(client, user, media_root):
    """No validator: a browser fetched the whole original each time, or (cached) showed a deleted one."""
    image = make_image()
    client.force_login(user)
    url = reverse("gallery:image-file", args=[image.pk])
    first = client.get(url)
    assert first["ETag"] == f'"{image.sha256}"' and first["Cache-Control"] == "private, no-cache"
    again = client.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == first["ETag"]
    assert client.get(url, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200
    Image.objects.filter(pk=image.pk).update(added_by=user)
    assert client.delete(f"/api/images/{image.pk}/").status_code == 204
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 404


def test_an_upload_in_a_body_other_than_multipart_is_a_415_as_documented(client, user):
    """A urlencoded body (file=abc) was a 400 "not a file", where the schema says 415."""
    client.force_login(user)
    for body, content_type in (("file=abc", "application/x-www-form-urlencoded"),
                               ('{"file": "abc"}', "application/json")):
        refused = client.post(reverse("api-images"), body, content_type=content_type)
        assert refused.status_code == 415 and content_type in refused.json()["detail"], refused.content


def test_an_upload_whose_name_overflows_the_forms_headers_is_told_to_shorten_it(client, user):
    """250 emoji (1,000 bytes): Django's "Request max total header size exceeded" said nothing of the name."""
    from tests.gallery.factories import png_bytes

    client.force_login(user)
    refused = client.post(reverse("api-images"), {"file": SimpleUploadedFile("😀" * 250 + ".png", png_bytes())})
    assert refused.status_code == 400 and "the file's name is too long" in refused.json()["detail"]
    kept = client.post(reverse("api-images"), {"file": SimpleUploadedFile("猫" * 200 + ".png", png_bytes())})
    assert kept.status_code == 201 and kept.json()["original_name"] == "猫" * 200 + ".png"


@pytest.mark.django_db(transaction=True)
def test_deleting_an_account_that_adds_images_meanwhile_keeps_them_added_by_nobody(client, django_user_model,
                                                                                    monkeypatch):
    """An image the account added while Django deleted it (an upload loop, a running reset: committed after
    Django had set its rows' "added by" to nobody, before it deleted the user) still referred to it: the
    deletion ended in an IntegrityError (a 500) and the account stayed."""
    import threading

    from django.db import connection
    from django.db.models.sql.subqueries import DeleteQuery

    from gallery.models import ResetJob

    boss = django_user_model.objects.create_superuser("boss", password="B0ss-pass-long!")
    uploader = django_user_model.objects.create_user("uploader", password="Upl0ader-pass!")
    Image.objects.filter(pk=make_image(name="before.png", color=(9, 9, 9)).pk).update(added_by=uploader)
    real_delete_batch = DeleteQuery.delete_batch

    def upload_committed_meanwhile() -> None:  # another request, on its own connection
        try:
            Image.objects.filter(pk=make_image(name="late.png", color=(200, 9, 9)).pk).update(added_by=uploader)
            ResetJob.objects.create(folder="/photos", created_by=uploader)
        finally:
            connection.close()

    def delete_batch(self, pk_list, using):
        if self.model is django_user_model and not Image.objects.filter(original_name="late.png").exists():
            upload = threading.Thread(target=upload_committed_meanwhile)
            upload.start()
            upload.join(20)
        return real_delete_batch(self, pk_list, using)

    monkeypatch.setattr(DeleteQuery, "delete_batch", delete_batch)
    client.force_login(boss)
    response = client.post(reverse("admin:auth_user_delete", args=[uploader.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not django_user_model.objects.filter(username="uploader").exists()
    assert list(Image.objects.order_by("pk").values_list("original_name", "added_by")) == [
        ("before.png", None), ("late.png", None)]
    assert ResetJob.objects.get().created_by is None


def test_admin_offers_no_empty_mask_or_vector_rows_and_its_404_says_what_is_missing(client, django_user_model):
    """An image's page offered "Add another Mask" and "Add another Embedding" (an empty row showing a
    DatabaseDefault object); admin's own 404s (an unregistered model's page) read "Http404"."""
    boss = django_user_model.objects.create_superuser("boss", password="B0ss-pass-long!")
    image = make_image(name="a.png")
    add_mask(image, label="cat")
    add_embedding(image, space="content", model_key="autoencoder/v2", vector=np.full(1024, 1 / 1024))
    client.force_login(boss)
    page = client.get(reverse("admin:gallery_image_change", args=[image.pk])).content.decode()
    assert "cat" in page and "autoencoder/v2" in page  # the rows are shown
    assert 'name="masks-TOTAL_FORMS" value="1"' in page and 'name="embeddings-MAX_NUM_FORMS" value="0"' in page
    assert 'name="masks-MAX_NUM_FORMS" value="0"' in page and "DatabaseDefault" not in page
    for path in ("/admin/django_q/schedule/", "/admin/foo/"):
        answer = client.get(path)
        text = answer.content.decode()
        assert answer.status_code == 404 and "Http404" not in text
        assert f"There is no page at <code>{path}</code>" in text
