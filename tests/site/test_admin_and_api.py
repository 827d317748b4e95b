import pytest
from django.core.management import call_command
from django.urls import reverse

from gallery.models import Image
from tests.gallery.factories import add_embedding, add_mask, make_image

pytestmark = pytest.mark.django_db


def test_admin_login_page_is_served(client):
    assert client.get("/admin/login/").status_code == 200


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


def test_api_root_status_and_schema(client):
    root = client.get("/api/")
    assert root.status_code == 200 and "status" in root.json()
    status = client.get("/api/status/").json()
    assert status["profile"] in ("standard", "offline")
    assert status["pgvector_version"].startswith("0.")
    assert set(status["images"]) == {"pending", "ready", "failed"}
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_status_counts_images_by_status(client, media_root):
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
    call_command("ensure_admin")
    assert "correct-horse-battery" not in capsys.readouterr().out
    assert django_user_model.objects.get(username="admin").check_password("correct-horse-battery")


def test_admin_search_similar_from_an_image_page(client, staff_user, media_root, settings, tmp_path):
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
    pending = make_image(status="pending")
    response = client.get(reverse("admin:gallery_image_similar", args=[pending.pk]))
    assert response.status_code == 302  # back to the image page with the reason
