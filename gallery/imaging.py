"""Turning untrusted bytes into a validated picture, and pictures into what the models expect.

Everything that reads an image goes through here, so every entry point (upload, API, folder
import, reset) validates the same way and the models always get the same RGB conversion.
"""

from __future__ import annotations

import errno
import html
import io
import math
import os
import re
import stat
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np
import pillow_heif
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.http.multipartparser import MultiPartParser
from PIL import Image as PILImage
from PIL import ExifTags, PngImagePlugin, UnidentifiedImageError

from gallery.errors import Refused

# The formats we accept (Pillow's names), what a stored file of each is served as, and the file name
# suffixes it goes by (the first is the one we store and name downloads with): never what the
# uploader's file name says.
FORMAT_MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                      "AVIF": "image/avif", "HEIF": "image/heif", "GIF": "image/gif", "BMP": "image/bmp",
                      "TIFF": "image/tiff"}
FORMAT_SUFFIXES = {"JPEG": ("jpg", "jpeg", "jpe", "jfif"), "MPO": ("jpg", "jpeg", "mpo"), "PNG": ("png",),
                   "WEBP": ("webp",), "AVIF": ("avif",), "HEIF": ("heic", "heif", "hif"), "GIF": ("gif",),
                   "BMP": ("bmp", "dib"), "TIFF": ("tif", "tiff")}
ACCEPTED_FORMATS = set(FORMAT_MEDIA_TYPES)
ACCEPTED_NAMES = "JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP, TIFF"  # as users know them (MPO is a JPEG)
# In an <img>: Chrome, Firefox and Edge show no TIFF, and only Safari shows HEIC (a phone's photos).
SHOWN_BY_BROWSERS = ACCEPTED_FORMATS - {"TIFF", "HEIF"}
# Every browser turns a JPEG by its EXIF orientation (CSS image-orientation: from-image, the default since
# 2020); Chromium shows a WebP's pixels as stored (a WebP with orientation 6 lay on its side, its masks across it).
TURNED_BY_BROWSERS = {"JPEG", "MPO"}
# HEIC/HEIF (what phones save photos as) through pillow-heif's Pillow plugin; AVIF is Pillow's own.
# libheif applies the file's rotation while decoding and reports the EXIF orientation as upright.
pillow_heif.register_heif_opener()
FRAMES_PIXEL_FACTOR = 4  # an animation's (a multi-page file's) frames together: at most this many times the limit
MODEL_MAX_SIDE = 1024  # models never need more; masks are stored at this resolution at most
# A picture over this many pixels that is decoded whole (not a JPEG, which is decoded at a reduced DCT scale) is
# decoded by one thread of a process at a time: a 64 MP PNG held about 0.5 GB until scaled down (its RGBA, the
# RGB composite, the resize), and the web process's 4 threads, four such searches at once, peaked at 3 GB.
LARGE_DECODE_PIXELS = 16_000_000
_large_decode = threading.Lock()
# EXIF orientation -> the transpose that shows the picture upright (ImageOps.exif_transpose's table; that
# function also rewrites the EXIF block, which raised on a malformed tag, and no picture here keeps its EXIF).
UPRIGHT = {2: PILImage.Transpose.FLIP_LEFT_RIGHT, 3: PILImage.Transpose.ROTATE_180,
           4: PILImage.Transpose.FLIP_TOP_BOTTOM, 5: PILImage.Transpose.TRANSPOSE, 6: PILImage.Transpose.ROTATE_270,
           7: PILImage.Transpose.TRANSVERSE, 8: PILImage.Transpose.ROTATE_90}
QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that show the picture turned a quarter: width and height swap


class ImageRejected(Refused):
    """Input that is not an image we accept: HTTP 413 when it is too large, 400 otherwise."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message, status_code=413 if too_large else 400)
        self.too_large = too_large


@dataclass(frozen=True)
class DecodedImage:
    picture: PILImage.Image  # RGB, EXIF orientation applied, alpha composited on white
    format: str
    width: int
    height: int


def shown_as_stored(image_format: str, orientation: int) -> bool:
    """Whether a browser shows the stored file as the upright picture the masks are of; otherwise a page
    shows the WebP rendition the models' picture makes."""
    return image_format in SHOWN_BY_BROWSERS and (orientation == 1 or image_format in TURNED_BY_BROWSERS)


def header_facts(stream: IO[bytes]) -> tuple[str, int]:
    """(format, EXIF orientation) of a file already validated as an image, read from its header (the
    stream is rewound): a staged upload keeps no format of its own. ("", 1) when it cannot be read."""
    try:
        source = PILImage.open(stream)
        facts = source.format or "", _orientation(source)
    except Exception:  # noqa: BLE001 - validated when added; a file changed since is shown as it is
        facts = "", 1
    stream.seek(0)
    return facts


def download_name(original_name: str, image_format: str) -> str:
    """The name to serve a stored image under: the uploader's name, its suffix made the format's own
    (an upload named "x.html" is a PNG named "x.png"), so no name can make a browser treat it as a page."""
    stem, dot, suffix = original_name.rpartition(".")
    suffixes = FORMAT_SUFFIXES.get(image_format, ("bin",))
    if dot and suffix.lower() in suffixes:
        return original_name if stem else f"image.{suffixes[0]}"  # named ".png": it was served as ".png.png"
    return f"{stem if dot and stem else original_name}.{suffixes[0]}"


# What one compressed PNG text chunk (XMP, comments) may decompress to. Pillow's 1 MB refused a photo
# editor's XMP of a few MB as a damaged file; all chunks together stay within Pillow's MAX_TEXT_MEMORY.
PNG_TEXT_CHUNK_MAX_BYTES = 16 * 1024 * 1024


def configure_pillow() -> None:
    """Pillow's decompression-bomb guard, at our pixel limit (it raises above 2x, we reject above 1x),
    and its guard on PNG text chunks, at ours."""
    PILImage.MAX_IMAGE_PIXELS = settings.IMAGINAITION_MAX_PIXELS
    PngImagePlugin.MAX_TEXT_CHUNK = PNG_TEXT_CHUNK_MAX_BYTES


def _too_many_pixels(pixels: int | None) -> ImageRejected:
    """The refusal of an image over IMAGINAITION_MAX_PIXELS (pixels None: Pillow's count was not read)."""
    size = "" if pixels is None else f"{pixels:,}; "
    return ImageRejected(f"The image has too many pixels ({size}the limit is {settings.IMAGINAITION_MAX_PIXELS:,}).",
                         too_large=True)


def _check_size(size: int) -> None:
    limit = settings.IMAGINAITION_MAX_UPLOAD_BYTES
    if size > limit:
        raise ImageRejected(f"The file is {size:,} bytes; the limit is {limit:,} bytes.", too_large=True)


def read_file_in(root: Path, path: Path) -> bytes:
    """The bytes of `path`, a file under `root` (a folder already checked), refused (ImageRejected)
    without holding more than the limit in memory: a folder of photos may hold videos of gigabytes.
    Opened step by step from root without following a symbolic link, and read only if it is a regular
    file: between listing a folder and reading it, whoever may write there can put a link to a file
    outside the import roots, or a FIFO that blocks for ever, in a listed file's place. OSError when it
    cannot be read."""
    *folders, name = path.relative_to(root).parts
    opened = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        try:
            for folder in folders:
                opened.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=opened[-1]))
            # O_NONBLOCK: opening a FIFO would wait for a writer; it is refused below instead.
            opened.append(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=opened[-1]))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where a file or folder was listed
                raise ImageRejected("symbolic link: not followed") from None
            raise
        if not stat.S_ISREG(os.fstat(opened[-1]).st_mode):
            raise ImageRejected("not a regular file")
        limit = settings.IMAGINAITION_MAX_UPLOAD_BYTES
        with os.fdopen(os.dup(opened[-1]), "rb") as file:
            data = file.read(limit + 1)  # not the size: some files (e.g. under /proc) say 0 bytes and have more
            if len(data) > limit:
                _check_size(max(os.fstat(file.fileno()).st_size, len(data)))
        return data
    finally:
        for descriptor in opened:
            os.close(descriptor)


# Control characters that separate words (tabs, line breaks): a name keeps a space for each.
BLANK_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85")


def multipart_file_name(parser: MultiPartParser, file_name: str) -> str | None:
    """Django's MultiPartParser.sanitize_file_name (entities read, folders dropped, nothing left is no file),
    but keeping the invisible format characters it drops as "not printable": the zero-width joiner of an
    emoji sequence (👨‍👩‍👧 became three people) and the non-joiner of Persian or Indic words (another word).
    import_folder keeps them; stored_name removes the bidirectional controls among them either way."""
    file_name = html.unescape(file_name).rsplit("/")[-1].rsplit("\\")[-1]
    file_name = "".join(" " if char in BLANK_CONTROLS else char for char in file_name  # a tab: as import_folder
                        if char.isprintable() or char in BLANK_CONTROLS or unicodedata.category(char) == "Cf")
    return None if file_name in {"", ".", ".."} else file_name


def keep_format_characters_in_upload_names() -> None:
    """Every multipart parser, Django's and DRF's (which uses Django's), names files as multipart_file_name."""
    MultiPartParser.sanitize_file_name = multipart_file_name  # type: ignore[method-assign, assignment]


def upload_name(upload: UploadedFile) -> str:
    """The name the user's file has. Browsers send a multipart file name with " as %22 (and CR, LF as
    %0D, %0A: the HTML standard's form-data encoding), which Django keeps as it came: a photo named
    'the "big" day.jpg' was stored as 'the %22big%22 day.jpg', and as itself by import_folder."""
    name = upload.name or ""
    return name.replace("%22", '"').replace("%0D", " ").replace("%0A", " ")


def read_upload(upload: UploadedFile) -> bytes:
    """An uploaded file's bytes, refused (ImageRejected, 413) before reading when it is over the limit."""
    _check_size(upload.size or 0)
    return upload.read()


def _check_bytes(data: bytes) -> None:
    """What an upload's bytes must pass before any decoding: not empty, not over the size limit."""
    if not data:
        raise ImageRejected("The file is empty (0 bytes).")
    _check_size(len(data))


def decode_image(data: bytes) -> DecodedImage:
    """Fully decode `data` (a truncated file fails here, before anything is stored)."""
    _check_bytes(data)
    picture, image_format, _ = _decode(data)
    return DecodedImage(picture=picture, format=image_format, width=picture.width, height=picture.height)


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int
    height: int
    orientation: int  # the file's EXIF orientation (1: stored upright)


def image_check(data: bytes) -> ImageFacts:
    """Every check of decode_image (the whole stream is decoded, so a truncated file fails too) without
    the picture: a JPEG is decoded at its smallest DCT scale (1/8), where the full-size decode cost
    more than the models' own work on it (bench.ingest). Width and height are the full picture's as
    displayed (EXIF orientation applied). For a file being stored: the models decode it again later."""
    _check_bytes(data)
    with _decoding_errors_refused():  # the pixels are decoded, never turned upright nor converted...
        source, image_format, (width, height) = _load(data, draft_side=1)
        to_rgb(source.crop((0, 0, 1, 1)))  # ...but a pixel is: a mode with no way to RGB fails here, not later
        orientation = _orientation(source)
        _later_frames_check(source)
    return ImageFacts(format=image_format, width=width, height=height, orientation=orientation)


def _later_frames_check(source: PILImage.Image) -> None:
    """Decode every later frame of an animation or a multi-page file, one at a time: one cut short after
    its first frame (which the models see) was stored. All frames together stay within
    FRAMES_PIXEL_FACTOR × IMAGINAITION_MAX_PIXELS: a bomb can be a thousand frames as well as one large one."""
    frames = getattr(source, "n_frames", 1)
    budget = FRAMES_PIXEL_FACTOR * settings.IMAGINAITION_MAX_PIXELS
    total = source.width * source.height
    for index in range(1, frames):
        source.seek(index)
        total += source.width * source.height
        if total > budget:
            raise ImageRejected(f"The image's {frames} frames (or pages) have too many pixels in all (the limit is "
                                f"{budget:,}).", too_large=True)
        source.load()


def decode_for_models(data: bytes, max_side: int = MODEL_MAX_SIDE) -> DecodedImage:
    """The checks of decode_image (the whole stream is decoded, so a truncated file fails too), but the
    picture only as the models see it (picture_for_models); width and height are the full picture's
    as displayed (EXIF orientation applied). For uploads that are looked at, not stored: a 13 MP photo
    never sits in the web process at full size."""
    _check_bytes(data)
    picture, image_format, (width, height) = _decode_for_models(data, max_side)
    with _decoding_errors_refused():  # as image_check does: a picture looked at here may be added next
        _later_frames_check(PILImage.open(io.BytesIO(data)))
    return DecodedImage(picture=picture, format=image_format, width=width, height=height)


def picture_for_models(data: bytes, max_side: int = MODEL_MAX_SIDE) -> PILImage.Image:
    """The picture the models see (RGB, longest side at most `max_side`) from an image's bytes.

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose longest side still covers
    `max_side`: nearly the same picture after the final resize, at a fraction of the work on large
    photos (the ingest benchmark measured full decodes as a fifth of the pipeline's time). Every path
    that embeds (workers, search by upload) uses this, so the same bytes always give the same vectors.
    """
    return _decode_for_models(data, max_side)[0]


def _decode_for_models(data: bytes, max_side: int) -> tuple[PILImage.Image, str, tuple[int, int]]:
    """_decode, scaled down for the models before the full-size picture is let go; a large one (over
    LARGE_DECODE_PIXELS, decoded whole) waits for any other in this process to be scaled down first."""
    with ExitStack() as large_decode_held:
        picture, image_format, size = _decode(data, draft_side=max_side, hold=large_decode_held)
        return for_models(picture, max_side), image_format, size


def _draft_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """What to ask JPEG's DCT scaling for: the longest side at least `side` (for_models then scales it
    to exactly that), the other in proportion. Asking `side` on both sides kept a 2560x1600 photo at
    full size (its half, 1280x800, is below 1024 on the short side)."""
    width, height = size
    scale = side / max(width, height)
    if scale >= 1:
        return size
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


@contextmanager
def _decoding_errors_refused() -> Iterator[None]:
    """Every way Pillow fails on a file, as the ImageRejected a user reads."""
    try:
        yield
    except ImageRejected:
        raise
    except PILImage.DecompressionBombError as exc:  # Pillow's own guard, at twice our limit
        # Pillow's text names its own threshold: say only ours.
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(int(counted.group(1)) if counted else None) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"The file is not an image we can read; accepted: {ACCEPTED_NAMES}.") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Its metadata, not its pixels: one chunk past MAX_TEXT_CHUNK, or all of them past MAX_TEXT_MEMORY.
        if isinstance(exc, ValueError) and "MAX_TEXT_" in str(exc):
            raise ImageRejected(
                f"The image's metadata is too large: a PNG text chunk decompresses to more than "
                f"{PNG_TEXT_CHUNK_MAX_BYTES // 2**20} MB, or all of them to more than "
                f"{PngImagePlugin.MAX_TEXT_MEMORY // 2**20} MB.") from exc
        raise ImageRejected(f"The image is damaged or truncated: {exc}") from exc
    except MemoryError:
        raise  # the host's shortage, not the file's fault
    except Exception as exc:
        # Pillow's decoders meet malformed fields with whatever Python raises (a TIFF tag of the wrong type:
        # TypeError; struct.error, KeyError, IndexError...): the file's fault too, never a 500 or a stopped batch.
        raise ImageRejected(f"The image is damaged: {type(exc).__name__}: {exc}") from exc


def _load(data: bytes, *, draft_side: int | None,
          hold: ExitStack | None = None) -> tuple[PILImage.Image, str, tuple[int, int]]:
    """(the decoded file as stored, format, full size as displayed); every pixel is decoded, so a
    truncated file fails here. Call within _decoding_errors_refused. With `hold`, a picture decoded whole
    over LARGE_DECODE_PIXELS takes the process's large-decode lock first, held until `hold` closes."""
    configure_pillow()
    source = PILImage.open(io.BytesIO(data))  # the header only: no pixel is decoded yet
    if source.format not in ACCEPTED_FORMATS:
        raise ImageRejected(f"Unsupported image format {source.format}; accepted: {ACCEPTED_NAMES}.")
    # Our limit, checked here rather than by turning Pillow's warning into an error: a
    # warnings.catch_warnings() block is process-wide state, which concurrent threads (the web
    # process's, the pipeline's) would restore under each other.
    if source.width * source.height > settings.IMAGINAITION_MAX_PIXELS:
        raise _too_many_pixels(source.width * source.height)
    source.seek(0)  # animated GIF/WebP: the first frame
    width, height = source.size
    if draft_side is not None and source.format in ("JPEG", "MPO"):
        source.draft("RGB", _draft_size(source.size, draft_side))
    elif hold is not None and source.width * source.height > LARGE_DECODE_PIXELS:
        hold.enter_context(_large_decode)
    source.load()
    if _orientation(source) in QUARTER_TURNS:
        width, height = height, width
    return source, cast(str, source.format), (width, height)


def _orientation(picture: PILImage.Image) -> int:
    """The EXIF orientation (1, upright, where there is none or it is not a number)."""
    value = picture.getexif().get(ExifTags.Base.Orientation)
    return value if isinstance(value, int) else 1


def _decode(data: bytes, *, draft_side: int | None = None,
            hold: ExitStack | None = None) -> tuple[PILImage.Image, str, tuple[int, int]]:
    """(RGB picture, format, full size as displayed); the picture is smaller when drafted. `hold`: as _load's."""
    with _decoding_errors_refused():
        source, image_format, size = _load(data, draft_side=draft_side, hold=hold)
        turn = UPRIGHT.get(_orientation(source))
        if turn is not None:
            source = source.transpose(turn)  # the stored orientation's picture is dropped: one full-size copy
        return to_rgb(source), image_format, size


def to_rgb(picture: PILImage.Image) -> PILImage.Image:
    """RGB for the models: alpha (or a PNG's transparent colour) composited on white (not dropped to black),
    deep greys scaled to 8 bits, CMYK converted."""
    mode, key = picture.mode, picture.info.get("transparency")
    if mode == "RGB" and key is None:
        return picture
    if mode.startswith("I;16"):
        # 65535 = 255 × 257: exactly floor(v / 65535 × 255), in 16-bit integers. Float64 arrays (as
        # before) took 1.6 GB for one 8000×8000 picture that a 141 KB PNG holds.
        deep = np.asarray(picture, dtype=np.uint16)
        grey = PILImage.fromarray((deep // 257).astype(np.uint8), "L")
        if not isinstance(key, int):
            return grey.convert("RGB")
        grey.putalpha(PILImage.fromarray(np.where(deep == key, 0, 255).astype(np.uint8), "L"))
        picture = grey
    elif mode in ("I", "F"):
        array = np.array(picture, dtype=np.float32)  # a copy: scaled in place below
        top = float(array.max(initial=0.0))
        # Floats by the usual convention run 0..1; integers are 8-bit, 16-bit or, above, as deep as they go.
        top = 1.0 if mode == "F" and top <= 1.0 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        np.multiply(array, 255.0, out=array)  # then divided: 255 / top rounded made the brightest 254
        np.divide(array, top, out=array)
        np.clip(array, 0, 255, out=array)
        return PILImage.fromarray(array.astype(np.uint8), "L").convert("RGB")
    if picture.mode in ("P", "RGB", "L") and key is not None:
        picture = picture.convert("RGBA")  # the transparent index or colour becomes alpha 0
    elif picture.mode == "La":  # alpha premultiplied: Pillow converts it to LA only
        picture = picture.convert("LA").convert("RGBA")
    elif picture.mode in ("LA", "PA", "RGBa"):
        picture = picture.convert("RGBA")
    if picture.mode == "RGBA":
        # Pasted through its own alpha onto white: the same pixels as alpha_composite on an opaque white
        # RGBA then converted, without those two full-size RGBA copies (1.2 GB more for 64 MP).
        white = PILImage.new("RGB", picture.size, (255, 255, 255))
        white.paste(picture, mask=picture)
        return white
    return picture.convert("RGB")  # P without transparency, L, 1, CMYK, YCbCr, LAB, HSV


def for_models(picture: PILImage.Image, max_side: int = MODEL_MAX_SIDE) -> PILImage.Image:
    """Downscale so the longest side is at most `max_side` (models resize further themselves).

    Resized into a new picture rather than a copy shrunk in place (a full-size copy cost 1.6 ms a
    photo, same pixels). Lanczos stays: bicubic (−10 ms a photo) or a coarser JPEG draft (−9 ms)
    moved some photos' semantic vectors below cosine 0.999 (docs/BENCHMARKS.md, "Reading the
    hardware numbers")."""
    width, height = picture.size
    if max(width, height) <= max_side:
        return picture
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return picture.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=2.0)


def probability_to_png(probability: np.ndarray) -> bytes:
    """A soft mask in [0, 1] as an 8-bit grayscale PNG (probability × 255)."""
    array = np.clip(np.rint(np.asarray(probability, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # No optimize=True: it tries every filter and cost 124 ms a mask for 10 % smaller files (measured).
    PILImage.fromarray(array, "L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def png_to_probability(data: bytes | memoryview) -> np.ndarray:
    with PILImage.open(io.BytesIO(bytes(data))) as picture:
        return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
