"""Adding images: validation table, dedup, nothing half-written, the REST API and import_folder."""

import functools
import io
import math
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_q.models import OrmQ
from PIL import Image as PILImage
from PIL import ImageDraw, PngImagePlugin

from gallery import imaging, services
from gallery.imaging import (MODEL_MAX_SIDE, ImageRejected, decode_for_models, decode_image, for_models,
                             image_check, picture_for_models)
from gallery.models import Image, ProcessingStatus
from gallery.storage import stored_read
from tests.conftest import run_in_threads

pytestmark = pytest.mark.django_db(transaction=True)


def encode(picture: PILImage.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(size=(64, 48)) -> PILImage.Image:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    return PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def exif_rotated_jpeg() -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 60x40 file shows as 40x60
    return encode(photo((60, 40)), "JPEG", exif=exif)


def exif_block(entries: list[tuple[int, int, int, bytes]], data: bytes = b"") -> bytes:
    """An APP1 EXIF block (little-endian TIFF): entries of (tag, type, count, 4-byte value or offset);
    `data` follows the IFD (offsets into it start at 26 + 12 per entry)."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", tag, kind, count) + value
                                                      for tag, kind, count, value in entries) + b"\0\0\0\0"
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + data


def exif_with_a_tag_of_the_wrong_type() -> bytes:
    """Turned a quarter (orientation 6), and Software (ASCII by the standard) written as RATIONAL 72/1,
    as some cameras and editors do: rewriting that EXIF (ImageOps.exif_transpose) raised AttributeError."""
    rational_at = 8 + 2 + 2 * 12 + 4
    exif = exif_block([(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x0131, 5, 1, struct.pack("<I", rational_at))],
                      struct.pack("<II", 72, 1))
    return encode(photo((60, 40)), "JPEG", exif=exif)


def tiff_entry_retyped(data: bytes, tag: int, kind: int, value: int | None = None) -> bytes:
    """A little-endian TIFF with one entry of its first IFD given another type (and value), as damage does."""
    data = bytearray(data)
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for index in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * index
        if struct.unpack_from("<H", data, at)[0] == tag:
            struct.pack_into("<H", data, at + 2, kind)
            if value is not None:
                struct.pack_into("<H", data, at + 8, value)
            return bytes(data)
    raise AssertionError(f"no tag {tag}")


def palette_with_transparency() -> bytes:
    picture = PILImage.new("P", (20, 20), 0)
    picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(picture).rectangle((5, 5, 14, 14), fill=1)
    return encode(picture, "PNG", transparency=0)  # index 0 (black) is transparent


def animated_gif() -> bytes:
    frames = [PILImage.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions (a decompression bomb never needs its pixels)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


ACCEPTED = {
    "cmyk.jpg": (encode(photo().convert("CMYK"), "JPEG"), (64, 48)),
    "sixteen-bit.png": (encode(PILImage.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)), "PNG"), (64, 48)),
    "palette-transparent.png": (palette_with_transparency(), (20, 20)),
    "animated.gif": (animated_gif(), (16, 16)),
    "exif-rotated.jpg": (exif_rotated_jpeg(), (40, 60)),
    "plain.webp": (encode(photo(), "WEBP"), (64, 48)),
    "plain.bmp": (encode(photo(), "BMP"), (64, 48)),
    "plain.tiff": (encode(photo(), "TIFF"), (64, 48)),
    "plain.avif": (encode(photo(), "AVIF"), (64, 48)),
    "phone.heic": (encode(photo(), "HEIF"), (64, 48)),
    "transparent.heic": (encode(photo().convert("RGBA"), "HEIF"), (64, 48)),
    "exif-tag-of-the-wrong-type.jpg": (exif_with_a_tag_of_the_wrong_type(), (40, 60)),
    # ExtraSamples 1 (associated alpha) instead of 2: Pillow opens it as "La", which converts to LA only.
    "associated-alpha.tiff": (tiff_entry_retyped(encode(photo().convert("LA"), "TIFF"), 338, 3, 1), (64, 48)),
}

REJECTED = {
    "truncated.jpg": (encode(photo((200, 200)), "JPEG")[:600], 400, "truncated"),
    "zero-byte.png": (b"", 400, "empty"),
    "text.jpg": (b"this is not an image at all\n" * 10, 400, "not an image"),
    "bomb.png": (png_header_only(30000, 30000), 413, "too many pixels"),
    # Over our limit (64 MP) but under Pillow's error (twice it), where Pillow only warns.
    "just-over-the-limit.png": (png_header_only(8001, 8000), 413, "too many pixels"),
    "huge-dimensions.png": (png_header_only(100000, 100000), 413, "too many pixels"),
    # StripOffsets typed FLOAT instead of LONG: Pillow raises TypeError (was a 500, and stopped imports).
    "strip-offsets-as-float.tiff": (tiff_entry_retyped(encode(photo(), "TIFF"), 273, 11), 400, "damaged"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 400, "accepted: jpeg, png"),
}


@pytest.mark.parametrize("decode", [decode_image, decode_for_models])
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_inputs_are_decoded_to_rgb_with_the_right_size(name, decode):
    data, size = ACCEPTED[name]
    decoded = decode(data)
    assert decoded.picture.mode == "RGB" and decoded.picture.size == size == (decoded.width, decoded.height)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_a_phone_photo_turned_a_quarter_is_decoded_upright_as_a_jpeg_with_the_same_orientation_is(fmt):
    """AVIF keeps the EXIF orientation for us to apply; HEIF's decoder applies its own rotation and
    reports the picture upright: either way once, never twice or not at all."""
    picture = np.zeros((40, 60, 3), dtype=np.uint8)
    picture[:10, :15] = (255, 0, 0)  # red in the file's top-left corner: the top-right one, upright
    exif = PILImage.Exif()
    exif[0x0112] = 6
    expected = decode_image(encode(PILImage.fromarray(picture), "JPEG", exif=exif, quality=95))
    decoded = decode_image(encode(PILImage.fromarray(picture), fmt, exif=exif.tobytes(), quality=95))
    assert decoded.picture.size == expected.picture.size == (40, 60) == (decoded.width, decoded.height)
    red = np.asarray(decoded.picture)[..., 0] > 128
    assert np.array_equal(red, np.asarray(expected.picture)[..., 0] > 128) and red[2, 37] and not red[2, 2]


def test_an_upload_decoded_for_the_models_keeps_its_full_displayed_size_but_not_its_pixels():
    exif = PILImage.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 3000x2000 in the file, 2000x3000 on screen
    data = encode(photo((3000, 2000)), "JPEG", exif=exif)
    decoded = decode_for_models(data)
    assert (decoded.width, decoded.height) == (2000, 3000) == decode_image(data).picture.size
    assert max(decoded.picture.size) == MODEL_MAX_SIDE and decoded.picture.width < decoded.picture.height
    assert np.array_equal(np.asarray(decoded.picture), np.asarray(picture_for_models(data)))  # as the workers see it
    with pytest.raises(ImageRejected, match="truncated"):  # decoded at 1/2 scale, but every byte is read
        decode_for_models(data[: len(data) * 2 // 3])


def test_large_pictures_decoded_whole_are_scaled_down_one_at_a_time_per_process(monkeypatch):
    """A 64 MP PNG held about 0.5 GB until scaled down; four searches by one at once, on the web process's four
    threads, peaked at 3 GB. A large one waits for the one before to be scaled down; small ones and JPEGs
    (decoded at a reduced scale) do not wait."""
    at_once, most = 0, {"png": 0, "jpeg": 0}
    guard = threading.Lock()
    scale_down = imaging.for_models

    def slow_scale_down(picture, max_side=MODEL_MAX_SIDE, *, kind):
        nonlocal at_once
        with guard:
            at_once += 1
            most[kind] = max(most[kind], at_once)
        time.sleep(0.3)  # the full-size picture still held
        with guard:
            at_once -= 1
        return scale_down(picture, max_side)

    monkeypatch.setattr(imaging, "LARGE_DECODE_PIXELS", 100 * 100, raising=False)
    for kind, data in (("png", encode(photo((300, 200)), "PNG")), ("jpeg", encode(photo((300, 200)), "JPEG"))):
        monkeypatch.setattr(imaging, "for_models", functools.partial(slow_scale_down, kind=kind))
        run_in_threads(lambda: decode_for_models(data), 3)
        run_in_threads(lambda: picture_for_models(data, 64), 3)
    assert most == {"png": 1, "jpeg": 3}
    monkeypatch.setattr(imaging, "LARGE_DECODE_PIXELS", 300 * 200)  # at the limit: not large
    most["png"] = 0
    monkeypatch.setattr(imaging, "for_models", functools.partial(slow_scale_down, kind="png"))
    run_in_threads(lambda: decode_for_models(encode(photo((300, 200)), "PNG")), 3)
    assert most["png"] == 3


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_the_check_before_storing_gives_the_format_and_the_displayed_size(name):
    data, size = ACCEPTED[name]
    facts = image_check(data)
    assert (facts.width, facts.height) == size and facts.format == PILImage.open(io.BytesIO(data)).format


def test_a_large_jpeg_is_checked_at_its_smallest_scale_and_decoded_for_the_models_at_the_scale_that_covers_them(
        monkeypatch):
    """A landscape 2560x1600 photo: half its size (1280x800) still covers the models' 1024 on the long
    side, so that is what gets decoded; the check before storing decodes an eighth, every byte read."""
    from PIL import JpegImagePlugin

    decoded_sizes: list[tuple[int, int]] = []
    load = JpegImagePlugin.JpegImageFile.load

    def recording_load(self):
        result = load(self)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", recording_load)
    data = encode(photo((2560, 1600)), "JPEG")
    picture = picture_for_models(data)
    facts = image_check(data)
    assert list(dict.fromkeys(decoded_sizes)) == [(1280, 800), (320, 200)]  # (load runs more than once)
    assert picture.size == (1024, 640) and (facts.width, facts.height) == (2560, 1600)
    with pytest.raises(ImageRejected, match="truncated"):
        image_check(data[: len(data) * 2 // 3])


@pytest.mark.parametrize(("size", "expected"), [((3000, 2000), (1024, 683)), ((2000, 3000), (683, 1024)),
                                              ((5000, 3), (1024, 1)), ((1024, 700), (1024, 700))])
def test_the_models_picture_keeps_the_aspect_within_the_longest_side_and_never_loses_a_side(size, expected):
    picture = PILImage.new("RGB", size, (200, 40, 40))
    scaled = for_models(picture)
    assert scaled.size == expected and scaled.mode == "RGB"
    assert (scaled is picture) == (size == expected)  # small enough: the same picture, not a copy
    assert scaled.getpixel((0, 0)) == (200, 40, 40)  # a flat colour stays that colour


def test_alpha_is_composited_on_white_not_black():
    picture = decode_image(palette_with_transparency()).picture
    assert picture.getpixel((0, 0)) == (255, 255, 255)  # transparent corner
    assert picture.getpixel((10, 10)) == (255, 0, 0)  # opaque red square


@pytest.mark.parametrize("mode", ["RGB", "I;16"])
def test_a_transparent_colour_is_composited_on_white_as_alpha_is(mode):
    """A PNG's tRNS colour key on an RGB or 16-bit grey picture: its area went to black (the models and
    thumbnails saw black where browsers show the page through), unlike alpha and palette transparency."""
    values = np.zeros((20, 20), dtype=np.uint16)
    values[5:15, 5:15] = 40000
    picture = (PILImage.fromarray(values) if mode == "I;16"
               else PILImage.fromarray(np.stack([values // 157, values * 0, values * 0], axis=-1).astype(np.uint8)))
    assert picture.mode == mode
    key = 0 if mode == "I;16" else (0, 0, 0)
    decoded = decode_image(encode(picture, "PNG", transparency=key)).picture
    assert decoded.getpixel((0, 0)) == (255, 255, 255)  # the keyed colour: transparent
    assert decoded.getpixel((10, 10)) == ((155, 155, 155) if mode == "I;16" else (254, 0, 0))


def test_partial_alpha_blends_with_white_exactly_as_compositing_over_it():
    from gallery.imaging import to_rgb

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    picture = PILImage.fromarray(pixels, "RGBA")
    white = PILImage.new("RGBA", picture.size, (255, 255, 255, 255))
    expected = np.asarray(PILImage.alpha_composite(white, picture).convert("RGB"))
    assert np.array_equal(np.asarray(to_rgb(picture)), expected)
    assert np.array_equal(np.asarray(decode_image(encode(picture, "PNG")).picture), expected)


def test_sixteen_bit_is_scaled_not_clipped():
    array = np.asarray(decode_image(ACCEPTED["sixteen-bit.png"][0]).picture)[..., 0]
    assert array.min() == 0 and 100 < array.max() <= 255 and len(np.unique(array)) > 50


def test_first_frame_of_an_animated_gif():
    assert decode_image(animated_gif()).picture.getpixel((8, 8)) == (255, 0, 0)


@pytest.mark.parametrize("decode", [decode_image, decode_for_models, image_check])
@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_inputs_raise_a_clear_message(name, decode):
    data, _, words = REJECTED[name]
    with pytest.raises(ImageRejected) as caught:
        decode(data)
    assert words in caught.value.message.lower()


def test_a_picture_turned_upright_whatever_else_its_exif_holds():
    """The models and thumbnails see the upright picture: the orientation is applied without rewriting
    the EXIF (its malformed Software tag made that raise, after the file had been accepted)."""
    data = exif_with_a_tag_of_the_wrong_type()
    turned = PILImage.open(io.BytesIO(data)).convert("RGB").transpose(PILImage.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(decode_image(data).picture), np.asarray(turned))


def test_import_folder_goes_on_after_a_file_pillow_fails_on_in_an_unexpected_way(tmp_path, import_root, media_root,
                                                                                 capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_before.png").write_bytes(encode(photo(), "PNG"))
    (folder / "broken.tiff").write_bytes(REJECTED["strip-offsets-as-float.tiff"][0])
    (folder / "z_after.png").write_bytes(encode(photo((30, 20)), "PNG"))
    call_command("import_folder", str(folder))
    out = capsys.readouterr().out
    assert "added: 2, duplicates: 0, rejected: 1" in out and "rejected broken.tiff: The image is damaged" in out
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["a_before.png", "z_after.png"]


def test_a_decompression_bomb_is_refused_naming_its_size_and_only_our_limit(settings):
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_header_only(100000, 100000))
    limit = f"{settings.IMAGINAITION_MAX_PIXELS:,}"
    assert caught.value.message == f"The image has too many pixels (10,000,000,000; the limit is {limit})."
    assert caught.value.too_large


def test_the_pixel_limit_holds_for_concurrent_threads_and_leaves_the_warning_filters_alone(settings):
    """The web process decodes uploads on several threads, and the pipeline may too. The limit must
    not depend on process-wide state that one thread could restore under another."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    filters_before = list(warnings.filters)
    side = math.isqrt(settings.IMAGINAITION_MAX_PIXELS) + 1
    over = png_header_only(side, side)  # between our limit and Pillow's error (twice it)
    fine = encode(photo((400, 300)), "JPEG")

    def outcome(data: bytes) -> str:
        try:
            decode_image(data)
            return "decoded"
        except ImageRejected as exc:
            return exc.message

    inputs = [over, fine] * 100
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(outcome, inputs))
    assert outcomes[1::2] == ["decoded"] * 100
    refusal = f"too many pixels ({side * side:,}; the limit is {settings.IMAGINAITION_MAX_PIXELS:,})"
    assert all(refusal in o for o in outcomes[::2])
    assert warnings.filters == filters_before


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def upload(client, name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(reverse("api-images"), {"file": SimpleUploadedFile(name, data)})


def stored_files(media_root: Path) -> list[Path]:
    return [p for p in media_root.rglob("*") if p.is_file()] if media_root.exists() else []


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_api_ingests_each_accepted_input(signed_in, media_root, name):
    response = upload(signed_in, name, ACCEPTED[name][0])
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["width"], body["height"]) == ACCEPTED[name][1]
    assert body["status"] == "pending" and body["duplicate"] is False
    assert len(stored_files(media_root)) == 1


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_api_rejects_bad_input_with_4xx_and_leaves_nothing(signed_in, media_root, name):
    data, code, words = REJECTED[name]
    response = upload(signed_in, name, data)
    assert response.status_code == code
    # What the file holds is the file field's fault ({"file": [why]}); a body over a limit is said as every one
    said = response.json()["file"] if code == 400 else [response.json()["detail"]]
    assert len(said) == 1 and words in said[0].lower()
    assert Image.objects.count() == 0 and stored_files(media_root) == [] and OrmQ.objects.count() == 0


def several_frames(fmt: str, count: int = 3, size=(160, 120)) -> bytes:
    frames = [photo((size[0] + i, size[1])).resize(size) for i in range(count)]  # distinct noise each
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("fmt, name", [("GIF", "cut.gif"), ("PNG", "cut.png"), ("TIFF", "cut.tiff")])
def test_an_animation_or_multi_page_file_cut_after_its_first_frame_is_refused_and_not_stored(
        signed_in, media_root, fmt, name):
    """Its first frame (what the models see) decoded, so it was stored, and served cut short."""
    whole = several_frames(fmt)
    assert image_check(whole).format == fmt
    cut = whole[: len(whole) * 4 // 5]
    assert decode_image(cut).picture.size == (160, 120)  # the first frame is whole
    for check in (image_check, decode_for_models):  # adding it; looking at it (search, the staged upload)
        with pytest.raises(ImageRejected, match="truncated|damaged"):
            check(cut)
    response = upload(signed_in, name, cut)
    assert response.status_code == 400 and re.search("truncated|damaged", response.json()["file"][0])
    assert Image.objects.count() == 0 and stored_files(media_root) == []


def test_all_frames_together_stay_within_a_pixel_budget(settings):
    settings.IMAGINAITION_MAX_PIXELS = 10_000  # 4 x 10,000 in all: four frames of 50 x 50 = 2,500 pass, not 17
    assert image_check(several_frames("GIF", count=16, size=(50, 50))).format == "GIF"
    for check in (image_check, decode_for_models):
        with pytest.raises(ImageRejected, match="17 frames .* too many pixels in all") as caught:
            check(several_frames("GIF", count=17, size=(50, 50)))
        assert caught.value.too_large


def png_with_compressed_text(megabytes: int, chunks: int = 1) -> bytes:
    info = PngImagePlugin.PngInfo()
    for chunk in range(chunks):
        info.add_itxt(f"XML:com.adobe.xmp{chunk}", "<x:xmpmeta/>" + "a" * (megabytes * 2**20), zip=True)
    return encode(photo(), "PNG", pnginfo=info)


def test_a_png_with_megabytes_of_compressed_metadata_is_read_and_a_text_bomb_refused_as_such(signed_in, media_root):
    """Pillow's 1 MB limit on a compressed text chunk refused a photo editor's 3 MB XMP as "damaged or
    truncated: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"."""
    assert decode_for_models(png_with_compressed_text(3)).picture.size == (64, 48)
    assert upload(signed_in, "xmp.png", png_with_compressed_text(3)).status_code == 201
    for name, bomb in (("text-bomb.png", png_with_compressed_text(20)),  # 20 MB of text in a file of some 20 KB
                       ("text-bombs.png", png_with_compressed_text(15, chunks=5))):  # each within, all past 64 MB
        response = upload(signed_in, name, bomb)
        assert response.status_code == 400
        assert response.json()["file"][0] == ("The image's metadata is too large: a PNG text chunk decompresses to "
                                             "more than 16 MB, or all of them to more than 64 MB."), name
    assert Image.objects.count() == 1


def test_a_name_with_double_quotes_is_stored_as_the_user_named_the_file(signed_in, media_root):
    """Browsers send " in a multipart file name as %22 (the HTML standard's form-data encoding): the
    API and the gallery page stored 'the %22big%22 day.jpg' where import_folder stores the real name."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    as_sent = "the %22big%22 day.jpg"  # what Chromium sends for: the "big" day.jpg
    assert upload(signed_in, as_sent, encode(photo(), "JPEG")).status_code == 201
    signed_in.post(reverse("pages:images-add"), {"files": [SimpleUploadedFile("line%0Abreak.png", encode(photo(), "PNG"))]})
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ['line break.png', 'the "big" day.jpg']


def test_api_rejects_files_over_the_byte_limit_with_413(signed_in, media_root, settings):
    settings.IMAGINAITION_MAX_UPLOAD_BYTES = 1000
    response = upload(signed_in, "big.bmp", encode(photo(), "BMP"))
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert Image.objects.count() == 0


def test_duplicate_upload_returns_the_existing_image_with_200(signed_in, media_root):
    data = encode(photo(), "PNG")
    first = upload(signed_in, "a.png", data)
    second = upload(signed_in, "renamed.png", data)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second.json()["duplicate"] is True
    assert Image.objects.count() == 1 and len(stored_files(media_root)) == 1


def test_upload_enqueues_its_processing_after_commit(signed_in, media_root):
    upload(signed_in, "a.png", encode(photo(), "PNG"))
    assert OrmQ.objects.count() == 1  # one task: it embeds, then segments


def test_anonymous_cannot_write_or_read_private_gallery(client, media_root):
    assert upload(client, "a.png", encode(photo(), "PNG")).status_code in (401, 403)
    assert client.get(reverse("api-images")).status_code in (401, 403)
    assert Image.objects.count() == 0
    from tests.gallery.factories import make_image

    existing = make_image()
    assert client.delete(reverse("api-image", args=[existing.pk])).status_code in (401, 403)
    assert client.post(reverse("api-image-retry", args=[existing.pk])).status_code in (401, 403)
    assert Image.objects.filter(pk=existing.pk).exists()


def test_public_gallery_reads_but_never_anonymous_writes(client, media_root, settings):
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    assert client.get(reverse("api-images")).status_code == 200
    assert upload(client, "a.png", encode(photo(), "PNG")).status_code in (401, 403)


def test_a_failure_while_saving_the_row_leaves_no_file(media_root, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Image, "save", broken_save)
    with pytest.raises(RuntimeError):
        services.image_add(data=encode(photo(), "PNG"), original_name="a.png")
    assert stored_files(media_root) == []


def test_an_upload_the_storage_cannot_take_gets_503_in_json_and_leaves_nothing(signed_in, media_root, monkeypatch):
    from gallery.storage import AtomicFileSystemStorage

    def folder_blocked(self, name, content):
        raise NotADirectoryError(20, "Not a directory")

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", folder_blocked)
    response = upload(signed_in, "a.png", encode(photo(), "PNG"))
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Storing the file failed: Not a directory. The file was not kept")
    assert Image.objects.count() == 0 and stored_files(media_root) == [] and OrmQ.objects.count() == 0


def test_an_unexpected_api_error_is_answered_in_json_and_a_page_error_in_html(user, media_root, monkeypatch):
    from django.test import Client

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "image_add", broken)
    client = Client(raise_request_exception=False)  # as a served request: the error is answered, not raised
    client.force_login(user)
    response = upload(client, "a.png", encode(photo(), "PNG"))
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert "failed on this request" in response.json()["detail"] and "a bug" not in response.content.decode()

    from gallery import selectors

    monkeypatch.setattr(selectors, "label_counts", lambda: broken())
    page = client.get(reverse("pages:gallery"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


def test_delete_removes_row_masks_embeddings_and_files(signed_in, media_root):
    from tests.gallery.factories import add_embedding, add_mask

    image_id = upload(signed_in, "a.png", encode(photo(), "PNG")).json()["id"]
    image = Image.objects.get(pk=image_id)
    add_mask(image)
    add_embedding(image, space="content", model_key="autoencoder/v1", vector=[1 / 1024] * 1024)
    assert signed_in.get(reverse("gallery:image-thumbnail", args=[image_id])).status_code == 200
    assert len(stored_files(media_root)) == 2  # original + thumbnail

    assert signed_in.delete(reverse("api-image", args=[image_id])).status_code == 204
    assert not Image.objects.exists() and stored_files(media_root) == []
    assert signed_in.get(reverse("api-image", args=[image_id])).status_code == 404


def test_detail_lists_masks_and_models(signed_in, media_root):
    from tests.gallery.factories import add_embedding, add_mask

    image_id = upload(signed_in, "a.png", encode(photo(), "PNG")).json()["id"]
    image = Image.objects.get(pk=image_id)
    mask = add_mask(image, label="dog", class_index=12)
    add_embedding(image, space="content", model_key="autoencoder/v1", vector=[1 / 1024] * 1024)
    body = signed_in.get(reverse("api-image", args=[image_id])).json()
    assert body["masks"][0]["label"] == "dog" and body["masks"][0]["mask_url"].endswith(f"/masks/{mask.pk}.png")
    assert body["embedded_by"] == [{"space": "content", "model_key": "autoencoder/v1"}]
    assert signed_in.get(body["masks"][0]["mask_url"]).status_code == 200


@pytest.fixture
def import_root(settings, tmp_path):
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]


@pytest.fixture
def photo_folder(tmp_path, import_root):
    """20 real photos from scikit-image (and crops of them) plus junk of every kind."""
    from skimage import data as skdata

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    sources = [getattr(skdata, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    count = 0
    for index, array in enumerate(sources):
        for crop in range(4):
            h, w = array.shape[:2]
            piece = array[crop * h // 10: h - crop * h // 12, crop * w // 9: w - crop * w // 11]
            target = folder / ("sub" if crop == 3 else "") / f"photo-{index}-{crop}.jpg"
            PILImage.fromarray(piece).save(target, quality=90)
            count += 1
    assert count == 20
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.jpg").write_bytes((folder / "photo-0-0.jpg").read_bytes()[:2000])
    (folder / "empty.png").write_bytes(b"")
    outside = tmp_path / "secret.jpg"
    PILImage.fromarray(sources[0]).save(outside)
    os.symlink(outside, folder / "link-outside.jpg")
    return folder


def test_import_folder_imports_exactly_the_photos_and_reports_the_junk(photo_folder, media_root, capsys):
    call_command("import_folder", str(photo_folder), "--recursive")
    out = capsys.readouterr().out
    assert "added: 20, duplicates: 0, rejected: 4" in out
    assert "rejected notes.txt: The file is not an image" in out
    assert "rejected truncated.jpg: The image is damaged or truncated" in out
    assert "rejected empty.png: The file is empty" in out
    assert "rejected link-outside.jpg: symbolic link: not followed" in out
    assert Image.objects.count() == 20
    assert not Image.objects.filter(original_name="link-outside.jpg").exists()

    call_command("import_folder", str(photo_folder), "--recursive")
    assert "added: 0, duplicates: 20, rejected: 4" in capsys.readouterr().out
    assert Image.objects.count() == 20


def test_import_folder_without_recursive_skips_sub_folders(photo_folder, media_root, capsys):
    call_command("import_folder", str(photo_folder))
    out = capsys.readouterr().out
    assert "added: 15," in out and "sub-folders not read (add --recursive to import them too): sub" in out
    call_command("import_folder", str(photo_folder), "--recursive")
    assert "sub-folders not read" not in capsys.readouterr().out


def test_import_folder_fails_for_an_unusable_path(tmp_path, import_root):
    (tmp_path / "a-file.jpg").write_bytes(b"x")
    with pytest.raises(CommandError, match="is not a folder"):
        call_command("import_folder", str(tmp_path / "a-file.jpg"))
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_folder", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="Give the path of a folder"):  # not "`.` is outside …"
        call_command("import_folder", "")


def test_a_folder_whose_name_ends_in_a_space_is_imported(tmp_path, import_root, media_root, capsys):
    folder = tmp_path / "holiday "
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(photo(), "PNG"))
    call_command("import_folder", str(folder))
    assert "added: 1," in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_is_imported_under_a_readable_name_and_the_rest_goes_on(
        tmp_path, import_root, media_root, capsys):
    """Such a name reached PostgreSQL (and a reset's JSON) as lone surrogates: the whole import failed
    with a UnicodeEncodeError that named no file."""
    folder = tmp_path / "mixed-names"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(photo((61, 40)), "PNG"))
    with open(os.path.join(os.fsencode(folder), b"b_\xff\xfe.png"), "wb") as handle:
        handle.write(encode(photo((62, 40)), "PNG"))
    with open(os.path.join(os.fsencode(folder), b"c_\xff.txt"), "wb") as handle:
        handle.write(b"not an image")
    (folder / "d.png").write_bytes(encode(photo((63, 40)), "PNG"))

    call_command("import_folder", str(folder))
    out = capsys.readouterr().out
    assert "added: 3, duplicates: 0, rejected: 1" in out and "rejected c_\ufffd.txt: The file is not an image" in out
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["a.png", "b_\ufffd\ufffd.png", "d.png"]


def test_the_same_bytes_again_store_a_missing_file_again_and_retry_what_failed_without_it(media_root, user):
    """The row was found by its SHA-256 and returned as a duplicate: the image stayed failed for good."""
    from django.core.files.storage import default_storage

    data = encode(photo((64, 41)), "PNG")
    image = services.image_add(data=data, original_name="kept.png", user=user, enqueue=False).image
    default_storage.delete(image.file.name)
    Image.objects.filter(pk=image.pk).update(status=ProcessingStatus.FAILED, error="The stored file is missing.")

    again = services.image_add(data=data, original_name="kept.png", user=user, enqueue=False)

    assert not again.created and again.image.pk == image.pk
    assert default_storage.exists(image.file.name) and stored_read(image.file.name) == data
    assert again.image.status == ProcessingStatus.PENDING and again.image.error == ""
    assert services.image_add(data=data, original_name="kept.png", enqueue=False).image.status == ProcessingStatus.PENDING


def test_adding_the_bytes_of_a_file_no_row_names_takes_that_file_instead_of_a_second_copy(media_root, monkeypatch):
    """A restore's files newer than its dump (or an add killed before its commit) are named by their SHA-256:
    adding those bytes again stored a second copy beside each, <sha256>_x7Yz.jpg."""
    import threading

    from django.core.files.storage import default_storage
    from django.db import IntegrityError, connection

    data = encode(photo((64, 43)), "PNG")
    orphan = services.image_add(data=data, original_name="first.png", enqueue=False).image.file.name
    Image.objects.all().delete()  # the row gone, its file left: what such a restore leaves
    assert default_storage.exists(orphan)

    image = services.image_add(data=data, original_name="again.png", enqueue=False).image
    assert image.file.name == orphan and [path.name for path in stored_files(media_root)] == [Path(orphan).name]

    # A concurrent add of the same bytes that won refers to the same file: the one that lost keeps it.
    Image.objects.all().delete()
    real_save = Image.save

    def another_add_wins(self, *args, **kwargs):  # committed by another connection before this insert
        winner = Image(sha256=self.sha256, file=self.file.name, original_name="winner.png", width=64, height=43,
                       format="PNG", byte_size=len(data))
        thread = threading.Thread(target=lambda: (real_save(winner), connection.close()))
        thread.start()
        thread.join()
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(Image, "save", another_add_wins)
    lost = services.image_add(data=data, original_name="lost.png", enqueue=False)
    assert not lost.created and lost.image.original_name == "winner.png"
    assert default_storage.exists(orphan)


@pytest.mark.parametrize("missing", ["read", "execute"])
def test_a_sub_folder_that_cannot_be_read_is_named_and_the_rest_is_imported(photo_folder, media_root, capsys,
                                                                              monkeypatch, missing):
    """Its PermissionError stopped the whole recursive import, nothing added. Without the read permission
    it cannot be listed; without the execute one it is listed but its entries cannot be looked at. (Tests
    run as root, who reads any folder: the refusal is the operating system's, as a user without the
    permission gets it.)"""
    locked = photo_folder / "sub"
    real_iterdir, real_is_symlink = Path.iterdir, Path.is_symlink

    def iterdir(path):
        if path == locked and missing == "read":
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    def is_symlink(path):
        if path.parent == locked and missing == "execute":
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_symlink(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(Path, "is_symlink", is_symlink)
    call_command("import_folder", str(photo_folder), "--recursive")
    out = capsys.readouterr().out
    assert "added: 15, duplicates: 0, rejected: 5" in out  # the 5 pictures of sub/ are not read
    assert "rejected sub: could not read the folder: Permission denied" in out


def test_import_folder_refuses_a_bad_batch_size_before_adding_anything(photo_folder, media_root):
    with pytest.raises(CommandError, match="--batch-size: must be 1 or more"):
        call_command("import_folder", str(photo_folder), "--sync", "--batch-size", "-3")
    assert not Image.objects.exists()
    # Without --sync the workers batch as IMAGINAITION_BATCH_SIZE says: it was ignored without a word.
    for command, arguments in (("import_folder", [str(photo_folder)]), ("retry_failed", [])):
        with pytest.raises(CommandError, match=r"--batch-size sets this process's batches: give it with --sync"):
            call_command(command, *arguments, "--batch-size", "4")
    assert not Image.objects.exists()


def test_a_sub_folder_not_read_and_a_failure_elsewhere_are_named_as_they_are(tmp_path, import_root, media_root,
                                                                              capsys, monkeypatch):
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(photo((70, 40)), "PNG"))
    os.mkdir(os.path.join(os.fsencode(folder), b"sub\xff"))
    call_command("import_folder", str(folder))
    assert "sub-folders not read (add --recursive to import them too): sub\ufffd" in capsys.readouterr().out

    def elsewhere(**kwargs):
        raise PermissionError(13, "Permission denied", "/srv/other/.handle_pids.json")

    monkeypatch.setattr("gallery.management.commands.import_folder.folder_import", elsewhere)
    with pytest.raises(CommandError) as failed:  # it named the folder, which was not the problem
        call_command("import_folder", str(folder))
    assert str(failed.value) == "/srv/other/.handle_pids.json: Permission denied"


def test_a_file_over_the_limit_is_refused_without_being_read_whole(tmp_path, settings, monkeypatch):
    from gallery.imaging import read_file_in

    settings.IMAGINAITION_MAX_UPLOAD_BYTES = 1000
    big = tmp_path / "holiday.mp4"
    big.write_bytes(b"\0" * 50_000)
    asked, real_fdopen = [], os.fdopen

    class Recording:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def fileno(self):
            return self.file.fileno()

        def read(self, size=-1):
            asked.append(size)
            return self.file.read(size)

    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: Recording(real_fdopen(*args, **kwargs)))
    with pytest.raises(ImageRejected, match="The file is 50,000 bytes; the limit is 1,000 bytes"):
        read_file_in(tmp_path, big)
    assert asked == [1001]  # never the whole file


def test_a_listed_file_replaced_by_a_link_or_a_fifo_before_it_is_read_is_refused(tmp_path, import_root, media_root,
                                                                                  capsys, monkeypatch):
    """Whoever may write into an import root could swap a listed file for a link to a file outside the
    roots (it was read and added) or for a FIFO (the import blocked for ever), between listing and reading."""
    from gallery import services as services_module
    from gallery.imaging import read_file_in

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "private.png"
    secret.write_bytes(encode(photo((50, 30)), "PNG"))
    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        (folder / name).write_bytes(encode(photo((40 + len(name), 30)), "PNG"))
    listed, refused = services_module.folder_files(root=folder, recursive=True)
    (folder / "a.png").unlink()
    os.symlink(secret, folder / "a.png")  # after the listing
    (folder / "b.png").unlink()
    os.mkfifo(folder / "b.png")
    (folder / "sub" / "c.png").rename(outside / "c.png")
    (folder / "sub").rmdir()
    os.symlink(outside, folder / "sub")  # a listed folder replaced by a link leading out
    monkeypatch.setattr(services_module, "folder_files", lambda **kwargs: (listed, refused))

    with pytest.raises(CommandError, match="None of the 3 files could be added"):
        call_command("import_folder", str(folder), "--recursive")
    out = capsys.readouterr().out
    assert "added: 0, duplicates: 0, rejected: 3" in out
    assert "rejected a.png: symbolic link: not followed" in out and "rejected b.png: not a regular file" in out
    assert "rejected sub/c.png: symbolic link: not followed" in out
    assert not Image.objects.exists()
    with pytest.raises(ImageRejected, match="symbolic link"):
        read_file_in(folder, folder / "a.png")


def test_when_storing_fails_the_import_stops_and_says_so(photo_folder, media_root, monkeypatch):
    from gallery.storage import AtomicFileSystemStorage

    def full(self, name, content):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", full)
    with pytest.raises(CommandError, match=r"\S+: Storing the file failed: No space left on device\. The file was not "
                                           r"kept; the media storage must be reachable and writable: "
                                           r"IMAGINAITION_MEDIA_ROOT \(a folder"):
        call_command("import_folder", str(photo_folder), "--recursive")
    assert not Image.objects.exists() and stored_files(media_root) == []


def test_an_interrupted_import_keeps_what_it_added_and_says_how_to_go_on(photo_folder, media_root, monkeypatch):
    from gallery import services

    real_add, added = services.image_add, []

    def add_then_interrupt(**kwargs):
        if len(added) == 2:
            raise KeyboardInterrupt  # Ctrl-C
        result = real_add(**kwargs)
        added.append(result)
        return result

    monkeypatch.setattr(services, "image_add", add_then_interrupt)
    with pytest.raises(CommandError, match=r"Interrupted after \d+ of \d+ files\. Every file added so far is stored "
                                           "whole") as interrupted:
        call_command("import_folder", str(photo_folder))
    read, total = map(int, re.findall(r"\d+", str(interrupted.value))[:2])  # how far it got, said
    assert 2 <= read < total
    assert Image.objects.count() == 2 and len(stored_files(media_root)) == 2


def test_a_sync_imports_summary_counts_what_became_of_its_images_meanwhile(tmp_path, import_root, media_root,
                                                                          monkeypatch, capsys):
    """It printed "processed: 12, failed: 0" when 6 of the 12 were deleted while the models loaded, and two
    runs at once on one folder each printed "processed: 30" of the same 30."""
    from gallery.management import processing

    from tests.gallery.factories import png_bytes

    for index in range(6):
        (tmp_path / f"{index}.png").write_bytes(png_bytes())

    def others_meanwhile(*, progress, **kwargs):
        waiting = list(Image.objects.filter(status=ProcessingStatus.PENDING).order_by("pk")
                       .values_list("pk", flat=True))
        Image.objects.filter(pk__in=waiting[:2]).delete()  # deleted by someone while the models loaded
        Image.objects.filter(pk=waiting[2]).update(status="ready", masks_status="ready")  # a worker's batch
        # waiting[3]: claimed by another run, not done yet
        Image.objects.filter(pk__in=waiting[4:]).update(status="ready", masks_status="ready")
        progress(2)  # this run's batch

    monkeypatch.setattr(processing, "images_process_here", others_meanwhile)
    call_command("import_folder", str(tmp_path), "--sync")
    assert ("processed: 3, failed: 0, done by this run: 2, the rest by workers or another run, still being processed "
            "elsewhere: 1, deleted meanwhile: 2") in capsys.readouterr().out


def test_a_sync_import_interrupted_hands_the_images_left_waiting_to_the_workers(photo_folder, monkeypatch):
    """A running worker cluster looks for waiting images only as it starts: without tasks queued for them,
    the images an interrupted --sync run left waiting would wait until a cluster restarts."""
    from gallery.management import processing

    def interrupted(**kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first batch

    monkeypatch.setattr(processing, "images_process_here", interrupted)
    with pytest.raises(CommandError, match=r"Interrupted while processing\. The images left waiting are the workers' "
                                           r"to finish \(\d+ queued now\): a running `manage.py qcluster` takes them"):
        call_command("import_folder", str(photo_folder), "--sync")
    waiting = set(Image.objects.filter(status=ProcessingStatus.PENDING).values_list("pk", flat=True))
    assert waiting and len(waiting) == Image.objects.count()
    assert {int(entry.task["name"].removeprefix("process-")) for entry in OrmQ.objects.all()} <= waiting
    assert OrmQ.objects.count() == len(waiting)  # one task per image: each claims a batch, extra ones end at once

    real_add, added = services.image_add, []

    def add_then_interrupt(**kwargs):
        if len(added) == 1:
            raise KeyboardInterrupt
        added.append(real_add(**kwargs))
        return added[-1]

    OrmQ.objects.all().delete()
    Image.objects.all().delete()
    monkeypatch.setattr(services, "image_add", add_then_interrupt)
    with pytest.raises(CommandError, match=r"Interrupted after \d+ of \d+ files\. Every file added so far is stored "
                                           r"whole; run the same command again to add the rest\. The images left "
                                           r"waiting are the workers'"):
        call_command("import_folder", str(photo_folder), "--sync")
    assert [entry.task["name"] for entry in OrmQ.objects.all()] == [f"process-{added[0].image.pk}"]


def test_import_folder_fails_when_no_file_could_be_added_and_names_duplicates_when_asked(
        tmp_path, import_root, media_root, capsys):
    junk = tmp_path / "videos"
    junk.mkdir()
    (junk / "holiday.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 100)
    (junk / "notes.txt").write_text("not an image")
    with pytest.raises(CommandError, match="None of the 2 files could be added"):
        call_command("import_folder", str(junk))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encode(photo(), "PNG"))
    (photos / "copy-of-a.png").write_bytes(encode(photo(), "PNG"))
    call_command("import_folder", str(photos), verbosity=2)
    out = capsys.readouterr().out
    assert "added: 1, duplicates: 1, rejected: 0" in out
    assert "duplicate copy-of-a.png: the same bytes are already stored" in out


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_greyscale_is_scaled_to_8_bits_for_the_models(mode):
    from gallery.imaging import to_rgb

    values = np.array([[0, 257, 256, 32768], [65535, 65280, 1, 514]], dtype=np.uint16)
    if mode == "I;16":
        picture = PILImage.frombytes("I;16", (4, 2), values.tobytes())
    else:
        picture = PILImage.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    rgb = np.asarray(to_rgb(picture))
    assert rgb.shape == (2, 4, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    # v / 65535 × 255, rounded down: 257 → 1, 256 → 0, 65280 → 254
    assert rgb[..., 0].tolist() == [[0, 1, 0, 127], [255, 254, 0, 2]]
    small = PILImage.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")  # 8-bit values in a 32-bit mode
    assert np.asarray(to_rgb(small))[..., 0].tolist() == [[0, 100, 255]]


def test_floats_in_zero_to_one_and_integers_deeper_than_sixteen_bits_keep_their_greys():
    """A float picture by the usual convention (0..1) came out black; 32-bit counts above 65535 white."""
    from gallery.imaging import to_rgb

    unit = PILImage.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit))[..., 0].tolist() == [[0, 127, 255]]
    deep = PILImage.fromarray(np.array([[0, 500_000, 1_000_000]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(deep))[..., 0].tolist() == [[0, 127, 255]]


def test_stored_pictures_and_their_folders_are_not_readable_by_other_local_accounts(media_root, user):
    """Files were 0644 and folders 0755: any account on the host could read a private gallery."""
    import stat as stat_module

    image = services.image_add(data=encode(photo((66, 44)), "PNG"), original_name="private.png", user=user,
                               enqueue=False).image
    path = Path(media_root) / image.file.name
    assert stat_module.S_IMODE(path.stat().st_mode) == 0o640
    folder = path.parent
    while folder != Path(media_root):
        assert stat_module.S_IMODE(folder.stat().st_mode) == 0o750, folder
        folder = folder.parent


def test_the_secret_key_file_is_made_private_from_its_first_byte(tmp_path):
    import stat as stat_module
    import subprocess
    import sys

    env = {**os.environ, "IMAGINAITION_VAR_DIR": str(tmp_path / "var")}
    env.pop("DJANGO_SECRET_KEY", None)
    code = "import os; os.umask(0o022); import imaginaition_site.settings as s; print(len(s.SECRET_KEY))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and int(done.stdout.strip()) > 40, done.stderr[-2000:]
    assert stat_module.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode) == 0o600


def test_a_thumbnail_of_a_large_photo_decodes_it_at_a_reduced_scale(media_root, user, monkeypatch):
    """A full decode of a 64 MP picture took hundreds of MB of the web process for a 128 px thumbnail."""
    from gallery.thumbnails import thumbnail_bytes

    big = PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    image = services.image_add(data=encode(big, "JPEG", quality=90), original_name="big.jpg", user=user,
                               enqueue=False).image
    from PIL import ImageFile

    decoded_sizes, real_load = [], ImageFile.ImageFile.load

    def load(self):
        decoded_sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    thumbnail = PILImage.open(io.BytesIO(thumbnail_bytes(image=image, size=128)))
    assert thumbnail.size == (128, 96) and thumbnail.format == "WEBP"
    assert decoded_sizes and max(max(size) for size in decoded_sizes) == 250  # the 1/8 scale covers 128 px


def test_a_stored_file_that_no_longer_decodes_has_no_thumbnail_and_the_log_says_which(client, user, media_root,
                                                                                      caplog):
    image = services.image_add(data=encode(photo(), "PNG"), original_name="later-damaged.png", user=user,
                               enqueue=False).image
    (media_root / image.file.name).write_bytes(b"overwritten on the disk since")
    client.force_login(user)
    with caplog.at_level("WARNING"):
        response = client.get(reverse("gallery:image-thumbnail", args=[image.pk]))
    assert response.status_code == 404  # was a 500
    assert f"its stored file {image.file.name} no longer decodes" in caplog.text


def test_retry_failed_leaves_images_whose_stored_file_is_missing_and_says_what_restores_them(media_root, capsys):
    """Each run queued it again, and it failed again at once ("The stored file is missing.")."""
    from tests.gallery.factories import make_image

    kept = make_image(name="kept.png", color=(10, 10, 10))
    lost = make_image(name="lost.png", color=(200, 10, 10))
    Image.objects.filter(pk__in=[kept.pk, lost.pk]).update(status="failed", error="The stored file is missing.")
    lost.file.storage.delete(lost.file.name)
    call_command("retry_failed")
    out = capsys.readouterr().out
    assert "1 failed image queued for the workers" in out
    assert (f"1 left as they are: the stored file is missing (lost.png (image {lost.pk})); adding the same file "
            "again restores it") in out
    assert dict(Image.objects.values_list("pk", "status")) == {kept.pk: "pending", lost.pk: "failed"}


def test_verbosity_0_writes_only_what_went_wrong_and_on_stderr(tmp_path, import_root, media_root, monkeypatch,
                                                               capsys):
    """For cron and scripts: `-v 0` still printed every count and summary (and the failed images on stdout)."""
    from gallery.management import processing

    from tests.gallery.factories import make_image, png_bytes

    for index in range(2):
        (tmp_path / f"{index}.png").write_bytes(png_bytes(color=(index * 90, 10, 10)))
    (tmp_path / "notes.jpg").write_text("not an image")

    def one_fails(*, progress, **kwargs):
        waiting = list(Image.objects.filter(status=ProcessingStatus.PENDING).order_by("pk"))
        Image.objects.filter(pk=waiting[0].pk).update(status="ready", masks_status="ready")
        Image.objects.filter(pk=waiting[1].pk).update(status="failed", error="The model gave up.")
        progress(2)

    monkeypatch.setattr(processing, "images_process_here", one_fails)
    with pytest.raises(CommandError, match="1 of 2 images could not be processed"):
        call_command("import_folder", str(tmp_path), "--sync", verbosity=0)
    written = capsys.readouterr()
    assert written.out == ""
    assert "rejected notes.jpg: The file is not an image" in written.err
    assert "failed 1.png" in written.err and "The model gave up." in written.err

    lost = make_image(name="lost.png", color=(200, 200, 10))
    Image.objects.filter(pk=lost.pk).update(status="failed", error="The stored file is missing.")
    lost.file.storage.delete(lost.file.name)
    call_command("retry_failed", verbosity=0)
    call_command("reembed", verbosity=0)
    written = capsys.readouterr()
    assert written.out == ""
    assert "1 left as they are: the stored file is missing (lost.png" in written.err

    call_command("retry_failed")  # the default verbosity says everything, on stdout, as before
    assert "failed image" in capsys.readouterr().out


def test_log_lines_print_above_a_commands_progress_bar_instead_of_cutting_it():
    """In a terminal a worker's or the pipeline's log line landed in the middle of the bar's line."""
    import io
    import logging
    import sys

    from gallery.management.output import progress_bar

    console = logging.StreamHandler(sys.stderr)  # as LOGGING's "console" handler
    logging.root.addHandler(console)
    try:
        terminal = io.StringIO()
        with progress_bar(total=2, desc="adding", file=terminal, disable=False) as bar:
            redirected = [handler for handler in logging.root.handlers if handler is not console]
            assert console not in logging.root.handlers  # its lines go through tqdm.write, above the bar
            assert any(type(handler).__module__ == "tqdm.contrib.logging" for handler in redirected)
            bar.update(1)
        assert console in logging.root.handlers  # and back once the bar is done
        with progress_bar(total=2, disable=True):  # no bar (not a terminal, or -v 0): log lines as always
            assert console in logging.root.handlers
    finally:
        logging.root.removeHandler(console)
