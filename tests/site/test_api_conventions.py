"""HTTP conventions an API client relies on: where a created image is, a format it cannot have, HEAD on
the files the API links to, and the body refusals the schema lists."""

import io

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image as PILImage
from rest_framework.authtoken.models import Token

from gallery.models import Image
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
    assert client.get("/api/nothing/", {"format": "xml"}, **token).status_code == 404  # no endpoint first
    by_accept = client.get("/api/images/", HTTP_ACCEPT="application/xml", **token)
    assert by_accept.status_code == 406
    assert by_accept.json() == {"detail": "Nothing here is written as 'application/xml': Accept may be "
                                          "application/json, text/html."}


def test_the_schema_is_yaml_or_json_and_its_refusals_are_json(client, token):
    assert client.get("/api/schema/", **token).content.startswith(b"openapi: 3.0.3")
    assert client.get("/api/schema/", {"format": "json"}, **token).json()["openapi"] == "3.0.3"
    for refused in (client.get("/api/schema/", HTTP_ACCEPT="text/html", **token),
                    client.get("/api/schema/", {"format": "xml"}, **token)):
        assert refused.status_code == 406 and refused["Content-Type"] == "application/json"
        assert refused.json()["detail"].startswith(("Nothing here is written as 'text/html'", "No format 'xml'"))
    # Refusals whose format was negotiated (YAML) were written in YAML: {"detail": {"string": …, "code": …}}
    many_fields = {f"f{number}": "1" for number in range(1_100)}
    for refused, status, said in ((client.get("/api/schema/", HTTP_AUTHORIZATION="Token nope"), 401, "Invalid token."),
                                  (client.post("/api/schema/", **token), 405, 'Method "POST" not allowed.'),
                                  (client.get("/api/schema/", many_fields, **token), 400, "more than 1,000 fields")):
        assert refused.status_code == status and refused["Content-Type"] == "application/json", refused.content
        assert said in refused.json()["detail"]


def test_what_a_signed_in_user_gets_no_shared_cache_may_keep(client, user, token, media_root):
    """Pages and API answers held a user's images and search texts with no Cache-Control at all."""
    image = make_image()
    assert "Cache-Control" not in client.get("/api/").headers  # the same for everyone: nothing to keep private
    for answer in (client.get("/api/images/", **token), client.get("/api/preferences/", **token)):
        assert answer["Cache-Control"] == "private", answer.wsgi_request.path
    client.force_login(user)
    for path in ("/gallery/", "/search/?text=my+secret", "/preferences/", "/api/status/",
                 f"/images/{image.pk}/masks/{add_mask(image).pk}.png"):
        assert "private" in client.get(path)["Cache-Control"], path
    assert client.get(f"/images/{image.pk}/thumbnail/")["Cache-Control"] == "private, max-age=86400"  # its own


def test_a_file_named_in_latin_1_bytes_is_told_why_it_was_not_read(client, token, media_root):
    """curl sends a file name as it is on disk: a Latin-1 "naïve.png" made Django skip the whole part, and the
    answer was "No file was submitted." of a file that was sent."""
    body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="na\xefve.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png_bytes() + b"\r\n--B--\r\n")
    refused = client.generic("POST", "/api/images/", body, content_type="multipart/form-data; boundary=B", **token)
    assert refused.status_code == 400 and "its headers (the file name) in UTF-8" in refused.json()["file"][0]
    assert not Image.objects.exists()
    # A file over one 64 KiB chunk of Django's parser: it read the file's bytes as the next part's headers,
    # "over 1,024 bytes", and the answer said the 9-byte name was too long.
    photo = io.BytesIO()
    PILImage.effect_noise((400, 400), 64).save(photo, "PNG")
    assert len(photo.getvalue()) > 2**16
    longer = body.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + photo.getvalue() + b"\r\n--B--\r\n"
    refused = client.generic("POST", "/api/images/", longer, content_type="multipart/form-data; boundary=B", **token)
    assert refused.status_code == 400 and "or not written in UTF-8" in refused.json()["detail"], refused.content
    assert not Image.objects.exists()
    # A file named ".." (valid UTF-8) is skipped the same way: the answer blamed the encoding alone.
    dots = body.replace(b"na\xefve.png", b"..")
    refused = client.generic("POST", "/api/images/", dots, content_type="multipart/form-data; boundary=B", **token)
    assert refused.status_code == 400 and 'not empty, "." or ".."' in refused.json()["file"][0]


def test_head_on_the_files_the_api_links_to_answers_as_get_without_the_body(client, token, media_root):
    image = make_image()
    mask = add_mask(image)
    described = client.get(f"/api/images/{image.pk}/", **token).json()
    for url in (described["file_url"], described["thumbnail_url"], f"/images/{image.pk}/masks/{mask.pk}.png"):
        got, head = client.get(url, **token), client.head(url, **token)
        assert head.status_code == 200, url  # was 405: GET only
        assert head["Content-Type"] == got["Content-Type"] and b"".join(head) == b"", url
    assert client.post(described["file_url"], **token).status_code == 405  # still read-only


def test_every_write_documents_the_refusals_of_a_body_and_every_operation_its_406_and_400(tmp_path):
    call_command("spectacular", "--file", str(tmp_path / "schema.yml"))
    schema = yaml.safe_load((tmp_path / "schema.yml").read_text())
    responses = {(method.upper(), path): operation["responses"] for path, methods in schema["paths"].items()
                 for method, operation in methods.items() if isinstance(operation, dict)}
    writes = {operation for operation in responses if operation[0] in ("POST", "PUT", "PATCH", "DELETE")}
    assert {("POST", "/api/images/"), ("POST", "/api/images/{image_id}/retry/"), ("DELETE", "/api/images/{image_id}/"),
            ("PUT", "/api/preferences/")} <= writes  # with a body or without: a chunked one is a 411
    for operation, answers in responses.items():
        assert "406" in answers, operation
        assert "400" in answers, operation  # at least a query string of too many fields (GET /api/status/?f0=…)
        assert {"411", "413"} <= set(answers) or operation not in writes, operation


def test_pages_answer_head_as_get_and_the_app_sends_no_body_for_it(client, user, token, media_root, monkeypatch):
    """Pages answered HEAD with 405 (a monitor's probe, a link checker); and for a HEAD the app sent the
    GET's body, which gunicorn dropped with a warning in the log each time. Django's test client drops it
    too, as a server does: switched off here, the test sees what the app sends."""
    import django.test.client

    monkeypatch.setattr(django.test.client, "conditional_content_removal", lambda request, response: response)
    image = make_image()
    mask = add_mask(image)
    client.force_login(user)
    pages = ["/", "/gallery/", f"/images/{image.pk}/", "/preferences/", "/search/?text=red",
             f"/images/{image.pk}/masks/{mask.pk}/overlay.png"]
    files = [f"/images/{image.pk}/file/", f"/images/{image.pk}/thumbnail/"]
    for url in pages + files:
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code == 200, (url, head.status_code)
        body = b"".join(head.streaming_content) if head.streaming else head.content
        assert body == b"", url
        sent = b"".join(got.streaming_content) if got.streaming else got.content
        if url not in pages[:-1]:  # a page's own bytes differ between two views (its CSRF token, timings)
            assert int(head["Content-Length"]) == len(sent), url
        assert int(head["Content-Length"]) > 0, url


def test_the_schema_names_the_processing_states_a_client_polls_for(tmp_path):
    """`status` and `masks_status` were plain strings: a client polling an image had no documented end state."""
    call_command("spectacular", "--file", str(tmp_path / "schema.yml"))
    schemas = yaml.safe_load((tmp_path / "schema.yml").read_text())["components"]["schemas"]
    assert schemas["ProcessingStatusEnum"]["enum"] == ["pending", "ready", "failed"]
    for name in ("ImageOutput", "ImageDetailOutput", "ImageAddedOutput"):
        fields = schemas[name]["properties"]
        for field in ("status", "masks_status"):
            assert {"$ref": "#/components/schemas/ProcessingStatusEnum"} in fields[field]["allOf"], (name, field)
        assert "until neither status is pending" in fields["status"]["description"]
    # And the preferences a text search echoes (the semantic index alone) are said to be what it ran with.
    assert "a text query has\nno content part" in schemas["SearchPreferences"]["description"]


@pytest.mark.parametrize("public", [False, True])
def test_the_schema_says_which_operations_a_public_gallery_opens_to_visitors_without_credentials(
        client, token, settings, public):
    """With IMAGINAITION_PUBLIC_GALLERY=1, listing and reading images, searching and the status answered visitors
    without credentials, while the schema listed a token or a cookie as needed for each."""
    settings.IMAGINAITION_PUBLIC_GALLERY = public
    operations = {operation["operationId"]: operation.get("security", [])
                  for path in client.get("/api/schema/", {"format": "json"}, **token).json()["paths"].values()
                  for operation in path.values() if isinstance(operation, dict)}
    opened = {"images_list", "images_retrieve", "search_create", "status_retrieve"}
    assert {name for name in opened if {} in operations[name]} == (opened if public else set())
    for written in ("images_create", "images_destroy", "images_retry_create"):  # writes always need a sign-in
        assert {} not in operations[written] and operations[written], written
    assert {} in operations["preferences_retrieve"]  # open either way
