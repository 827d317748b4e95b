"""HTTP conventions an API client relies on: where a created image is, a format it cannot have, HEAD on
the files the API links to, and the body refusals the schema lists."""

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from tests.gallery.factories import add_mask, make_image, png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(user) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}


def test_an_added_image_answers_201_with_its_api_address_in_location_and_a_copy_200_without(client, token,
                                                                                            media_root):
    data = png_bytes()
    added = client.post("/api/images/", {"file": SimpleUploadedFile("red.png", data)}, **token)
    assert added.status_code == 201
    assert added["Location"] == f"http://testserver/api/images/{added.json()['id']}/"
    assert client.get(added["Location"], **token).json()["id"] == added.json()["id"]

    again = client.post("/api/images/", {"file": SimpleUploadedFile("copy.png", data)}, **token)
    assert again.status_code == 200 and again.json()["id"] == added.json()["id"] and "Location" not in again


def test_a_format_the_address_does_not_write_is_a_406_naming_those_it_does_not_a_404(client, token, media_root):
    image = make_image()
    for url in ("/api/images/", f"/api/images/{image.pk}/"):
        refused = client.get(url, {"format": "xml"}, **token)
        assert refused.status_code == 406, url  # a 404 "Not found." read as "no such image"
        assert refused.json() == {"detail": "No format 'xml' here: ?format= may be api, json."}
    assert client.get(f"/api/images/{image.pk}/", {"format": "json"}, **token).json()["id"] == image.pk


def test_head_on_the_files_the_api_links_to_answers_as_get_without_the_body(client, token, media_root):
    image = make_image()
    mask = add_mask(image)
    described = client.get(f"/api/images/{image.pk}/", **token).json()
    for url in (described["file_url"], described["thumbnail_url"], f"/images/{image.pk}/masks/{mask.pk}.png"):
        got, head = client.get(url, **token), client.head(url, **token)
        assert head.status_code == 200, url  # was 405: GET only
        assert head["Content-Type"] == got["Content-Type"] and b"".join(head) == b"", url
    assert client.post(described["file_url"], **token).status_code == 405  # still read-only


def test_every_operation_with_a_body_documents_the_refusals_of_its_length(tmp_path):
    call_command("spectacular", "--file", str(tmp_path / "schema.yml"))
    schema = yaml.safe_load((tmp_path / "schema.yml").read_text())
    with_body = {(method.upper(), path): operation["responses"] for path, methods in schema["paths"].items()
                 for method, operation in methods.items() if "requestBody" in operation}
    assert {("POST", "/api/images/"), ("POST", "/api/search/"), ("PUT", "/api/preferences/")} <= set(with_body)
    for operation, responses in with_body.items():
        assert {"411", "413"} <= set(responses), operation
