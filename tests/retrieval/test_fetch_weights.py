"""fetch_weights against a local HTTP server: verified downloads, refused bad files, fast offline answers.

Every standard-profile weight file the registry would download is pointed at a payload served from
127.0.0.1 (or at a closed port), so nothing here touches the network."""

import functools
import hashlib
import io
import http.server
import re
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from retrieval import weights as weights_module
from retrieval.encoders import registry
from retrieval.weights import OFFLINE_MESSAGE, weights_fetch, weights_status
from tests.gallery.factories import png_bytes

PROJECT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the base class logs every request to stderr
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL) of a local HTTP server."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def weights_dir(settings, tmp_path, monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the local server must be reached directly
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path / "weights"
    settings.IMAGINAITION_MODEL_PROFILE = "auto"
    settings.IMAGINAITION_WEIGHTS_DIR.mkdir()
    for shipped in PROJECT_WEIGHTS.glob("autoencoder-*.pt"):  # what the README says another folder needs
        shutil.copy(shipped, settings.IMAGINAITION_WEIGHTS_DIR)
    return settings.IMAGINAITION_WEIGHTS_DIR


def payload(filename: str) -> bytes:
    return f"pretend these are the weights of {filename}\n".encode() * 2000


def point_standard_weights(monkeypatch, base_url: str, served_dir: Path | None = None, *,
                           corrupt: tuple[str, ...] = (), **overrides) -> dict[str, Path]:
    """Serve every downloadable standard-profile file from `base_url` (hash prefixes stay prefixes, as in the
    catalog); `corrupt` files get a hash that cannot match. Returns filename -> target path."""
    targets = {}
    for key in set(registry.profile_models("standard").values()):
        spec = registry.MODELS[key]
        if not any(weight.url for weight in spec.weights):
            continue
        files = []
        for weight in spec.weights:
            if weight.url:
                digest = hashlib.sha256(payload(weight.filename)).hexdigest()
                if weight.filename in corrupt:
                    digest = "0" * 64
                if served_dir is not None:
                    (served_dir / weight.filename).write_bytes(payload(weight.filename))
                weight = replace(weight, **{"url": f"{base_url}/{weight.filename}", "convert": None,
                                            "sha256": digest[:len(weight.sha256 or digest)], **overrides})
                targets[weight.filename] = weight.path()
            files.append(weight)
        monkeypatch.setitem(registry.MODELS, key, replace(spec, weights=tuple(files)))
    assert len(targets) >= 2, "the standard profile downloads CLIP and DeepLab"
    return targets


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def leftovers(folder: Path, targets: dict[str, Path]) -> list[str]:
    """Files in the weights folder besides the downloads and the project's own (a download's temporary files)."""
    shipped = {path.name for path in PROJECT_WEIGHTS.iterdir()}
    return sorted(p.name for p in folder.iterdir() if p not in targets.values() and p.name not in shipped)


def test_downloads_are_verified_and_put_in_place_then_skipped(served, weights_dir, monkeypatch):
    folder, url = served
    import os
    import stat

    targets = point_standard_weights(monkeypatch, url, folder)
    umask = os.umask(0o022)
    try:
        report = weights_fetch(progress=False)
    finally:
        os.umask(umask)
    assert report.ok and not report.offline
    assert {r.filename: r.status for r in report.results} == dict.fromkeys(targets, "downloaded")
    for filename, target in targets.items():
        assert target.read_bytes() == payload(filename)
        # Readable by the service's account, which may not be the one that fetched it (was -rw-------).
        assert stat.S_IMODE(target.stat().st_mode) == 0o644, filename
    assert leftovers(weights_dir, targets) == []

    again = weights_fetch(progress=False)
    assert [r.status for r in again.results] == ["present"] * len(targets)


def test_command_prints_the_downloads_and_exits_zero(served, weights_dir, monkeypatch, capsys):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    call_command("fetch_weights", "--no-progress")
    out = capsys.readouterr().out
    assert all(f"{filename} (" in out for filename in targets) and out.count(": downloaded") == len(targets)
    assert OFFLINE_MESSAGE not in out


def test_the_chosen_segmenter_is_fetched_instead_of_the_profiles(served, weights_dir, monkeypatch, settings):
    from retrieval.encoders.catalog import DEEPLABV3_RESNET101, LRASPP_MOBILENET

    settings.IMAGINAITION_SEGMENTER = LRASPP_MOBILENET.key
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    assert LRASPP_MOBILENET.weights[0].filename in targets
    assert DEEPLABV3_RESNET101.weights[0].filename not in targets
    report = weights_fetch(progress=False)
    assert report.ok and {r.filename for r in report.results} == set(targets)
    assert (weights_dir / LRASPP_MOBILENET.weights[0].filename).is_file()
    assert not (weights_dir / DEEPLABV3_RESNET101.weights[0].filename).exists()


def test_wrong_hash_keeps_nothing_and_the_command_fails(served, weights_dir, monkeypatch):
    folder, url = served
    clip_file = registry.MODELS["openclip/ViT-B-32/openai"].weights[0].filename
    targets = point_standard_weights(monkeypatch, url, folder, corrupt=(clip_file,))
    report = weights_fetch(progress=False)
    statuses = {r.filename: r for r in report.results}
    assert not report.ok and statuses[clip_file].status == "error" and "mismatch" in statuses[clip_file].message
    assert not targets[clip_file].exists()
    assert leftovers(weights_dir, targets) == []  # no temporary file either
    assert all(statuses[name].status == "downloaded" for name in targets if name != clip_file)
    with pytest.raises(CommandError, match="verification"):
        call_command("fetch_weights", "--no-progress")
    assert not targets[clip_file].exists() and leftovers(weights_dir, targets) == []


def test_a_present_file_with_the_wrong_hash_is_replaced(served, weights_dir, monkeypatch):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    name, target = next(iter(targets.items()))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"truncated")
    report = weights_fetch(progress=False)
    result = next(r for r in report.results if r.filename == name)
    assert result.status == "downloaded" and "replaced" in result.message
    assert target.read_bytes() == payload(name)


def test_stale_temporary_files_of_a_killed_run_are_removed(served, weights_dir, monkeypatch):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    weights_dir.mkdir(exist_ok=True)
    stale = [weights_dir / f".{name}.k1ll3d.part" for name in targets]
    for path in stale:
        path.write_bytes(b"half a download")
    weights_fetch(progress=False)
    assert not any(path.exists() for path in stale)


def reverse_bytes(source: Path, target: Path) -> None:
    Path(target).write_bytes(Path(source).read_bytes()[::-1])


def test_a_converted_file_is_verified_before_conversion(served, weights_dir, monkeypatch):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder, convert=f"{__name__}:reverse_bytes")
    assert weights_fetch(progress=False).ok
    for name, target in targets.items():
        assert target.read_bytes() == payload(name)[::-1]
    assert leftovers(weights_dir, targets) == []
    assert [r.status for r in weights_fetch(progress=False).results] == ["present"] * len(targets)


def test_an_http_error_is_an_error_not_offline(served, weights_dir, monkeypatch):
    _, url = served  # nothing written to the served folder: 404
    targets = point_standard_weights(monkeypatch, url)
    report = weights_fetch(progress=False)
    assert not report.ok and not report.offline
    assert all(r.status == "error" and "HTTP 404" in r.message for r in report.results)
    assert leftovers(weights_dir, targets) == []


def test_unreachable_sites_answer_quickly_with_the_offline_message(weights_dir, monkeypatch, capsys):
    targets = point_standard_weights(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    report = weights_fetch(progress=False)
    assert time.monotonic() - started < 10
    assert report.ok and report.offline and OFFLINE_MESSAGE in report.summary()
    assert [r.status for r in report.results] == ["unreachable"] * len(targets)

    started = time.monotonic()
    call_command("fetch_weights", "--timeout", "5")  # exit status 0: being offline is expected
    assert time.monotonic() - started < 30
    out = capsys.readouterr().out
    assert "offline profile will be used" in out and "active model profile: offline" in out
    assert leftovers(weights_dir, targets) == []


def test_a_hanging_connection_or_name_lookup_is_cut_at_the_timeout(weights_dir, monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):  # what a resolver without an answer does: socket timeouts do not apply
        release.wait(60)
        raise OSError("gave up")

    monkeypatch.setattr(weights_module.socket, "create_connection", hang)
    point_standard_weights(monkeypatch, "https://weights.invalid")
    started = time.monotonic()
    try:
        report = weights_fetch(connect_timeout=0.5, progress=False)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert report.offline and all(r.status == "unreachable" for r in report.results)


def test_unknown_model_keys_are_refused(weights_dir):
    with pytest.raises(ValueError, match="unknown"):
        weights_fetch(keys=["no/such-model"], progress=False)
    with pytest.raises(CommandError, match=r"unknown model keys: no/such-model; the keys with files to fetch: .*"
                                           r"openclip/ViT-B-32/openai"):
        call_command("fetch_weights", "--model", "no/such-model")
    for wrong in ("-1", "0", "nan", "inf", "1e12", "abc"):  # inf and 1e12 overflowed the socket's timer: a traceback
        with pytest.raises(CommandError, match="must be more than 0 and at most 3600 seconds"):
            call_command("fetch_weights", "--timeout", wrong)


def test_weights_status_reports_presence_and_hashes(served, weights_dir, monkeypatch):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    before = {s.filename: s for s in weights_status()}
    assert all(not before[name].present and before[name].hash_ok is None for name in targets)

    weights_fetch(progress=False)
    after = {s.filename: s for s in weights_status()}
    assert all(after[name].present and after[name].hash_ok for name in targets)
    assert after["autoencoder-v1.pt"].hash_ok is True  # shipped: checked against the file as this release ships it

    name, target = next(iter(targets.items()))
    target.write_bytes(b"damaged on disk")
    assert {s.filename: s for s in weights_status()}[name].hash_ok is False


@pytest.mark.parametrize(("profile", "said", "not_said"), [
    ("standard", "IMAGINAITION_MODEL_PROFILE=standard cannot run without them", "offline profile will be used"),
    # It said the standard profile cannot run, of a profile nobody had asked for.
    ("offline", "IMAGINAITION_MODEL_PROFILE=offline does not use them", "standard cannot run without them"),
])
def test_offline_with_a_profile_asked_for_by_name_it_says_what_that_means_for_it(weights_dir, monkeypatch, settings,
                                                                                  capsys, profile, said, not_said):
    point_standard_weights(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    settings.IMAGINAITION_MODEL_PROFILE = profile
    if profile == "standard":  # it cannot serve: a setup step that goes on to start it must stop here
        with pytest.raises(CommandError, match="the weights of .* are not in .*or set IMAGINAITION_MODEL_PROFILE=auto"):
            call_command("fetch_weights", "--timeout", "5")
    else:
        call_command("fetch_weights", "--timeout", "5")
    out = capsys.readouterr().out
    assert said in out and not_said not in out
    assert f"active model profile: {profile}" in out


def test_a_weights_folder_without_the_projects_own_files_fails_naming_them(weights_dir, monkeypatch, settings):
    """The autoencoder's file ships with the project, so no download brings it: a weights folder set
    elsewhere without it made every image fail, after a fetch_weights that said nothing and exited 0."""
    point_standard_weights(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    for shipped in weights_dir.glob("autoencoder-*.pt"):
        shipped.unlink()
    missing = [key for key in registry.profile_models("offline").values() if not registry.MODELS[key].weights_present()]
    assert missing and all(key.startswith("autoencoder/") for key in missing)
    with pytest.raises(CommandError, match=rf"the weights of {missing[0]} are not in {weights_dir}: every image would "
                                           r"fail to process\. .*this project ships the file in its weights/ folder: copy autoencoder-v2\.pt into"):
        call_command("fetch_weights", "--timeout", "5")


def test_a_truncated_weight_file_is_named_with_what_to_do_and_no_unsafe_advice(settings, tmp_path, caplog):
    from retrieval.encoders import registry
    from retrieval.encoders.registry import WeightsUnreadable, get_model

    shipped = registry.MODELS["autoencoder/v2"].weights[0].path().read_bytes()
    (tmp_path / "autoencoder-v2.pt").write_bytes(shipped[: len(shipped) // 3])  # a copy cut short
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    registry.unload_all()
    try:
        with pytest.raises(WeightsUnreadable) as refused:
            get_model("autoencoder/v2")
    finally:
        registry.unload_all()
    message = str(refused.value)
    assert str(tmp_path / "autoencoder-v2.pt") in message and "weights_only" not in message
    # The project ships this file: fetch_weights, which downloads only files with a URL, would not repair it.
    assert "`git checkout -- weights/autoencoder-v2.pt`" in message and "fetch_weights" not in message
    assert message.endswith("then `python manage.py retry_failed`.")
    mismatch = next(message for message in caplog.messages if "does not match its SHA-256" in message)
    assert "fetch_weights" not in mismatch and "`git checkout -- weights/autoencoder-v2.pt`" in mismatch

    (tmp_path / "autoencoder-v2.pt").write_bytes(b"<html>404 Not Found</html>")  # a saved error page
    with pytest.raises(WeightsUnreadable, match="could not be read"):
        get_model("autoencoder/v2")
    registry.unload_all()


@pytest.mark.django_db
def test_a_missing_weight_file_is_named_as_the_models_not_as_the_media_storage(weights_dir, settings, client, user,
                                                                             media_root, caplog):
    """A search answered 503 "The media storage ... could not be reached: No such file or directory" (the
    FileNotFoundError read as the storage's), and a failed image said only "[Errno 2] No such file"."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    (weights_dir / "autoencoder-v2.pt").unlink()
    registry.unload_all()
    try:
        with pytest.raises(registry.WeightsMissing) as refused:
            registry.get_model("autoencoder/v2")
        assert str(refused.value) == (
            f"autoencoder/v2: its weight file {weights_dir / 'autoencoder-v2.pt'} is missing: copy the project's "
            "weights/autoencoder-v2.pt there again (in a clone: `git checkout -- weights/autoencoder-v2.pt`); then "
            "`python manage.py retry_failed`.")
        client.force_login(user)
        answer = client.post("/api/search/", {"image": SimpleUploadedFile("q.png", png_bytes(size=(64, 64)))})
        assert answer.status_code == 503, answer.content
        assert answer.json()["detail"].startswith("Search is unavailable just now: the model autoencoder/v2 cannot")
        assert "media storage" not in answer.content.decode()
        assert "autoencoder-v2.pt is missing" in caplog.text  # the log says which file and what to do
    finally:
        registry.unload_all()


@pytest.mark.django_db
def test_a_batch_whose_model_cannot_load_fails_once_with_the_file_named_and_no_traceback(weights_dir, settings,
                                                                                       media_root, caplog):
    """Each batch logged the chained traceback, then tried the model again for each image, logging each: 238
    lines for 30 images, where the message names the file and what to do."""
    import logging

    from gallery.models import Image
    from retrieval.pipeline import embed_batch
    from tests.gallery.factories import make_image

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    (weights_dir / "autoencoder-v2.pt").unlink()
    registry.unload_all()
    images = [make_image(name=f"{i}.png", color=(i * 40, 9, 9), status="pending") for i in range(3)]
    try:
        with caplog.at_level(logging.INFO):
            embed_batch()
    finally:
        registry.unload_all()
    errors = {image.error for image in Image.objects.filter(pk__in=[image.pk for image in images])}
    assert len(errors) == 1 and "autoencoder-v2.pt is missing" in errors.pop()
    records = [record for record in caplog.records if record.name == "retrieval.pipeline" and record.levelno >= 40]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage().startswith("batch of 3 failed: autoencoder/v2: its weight file ")
    loads = [record for record in caplog.records if record.getMessage() == "loading model autoencoder/v2"]
    assert len(loads) == 1  # not once more for each image


@pytest.mark.django_db
def test_a_shipped_file_that_is_not_as_released_is_shown_unverified_and_named_by_fetch_weights(
        weights_dir, settings, client, user, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    client.force_login(user)
    target = weights_dir / "autoencoder-v2.pt"
    target.write_bytes(target.read_bytes()[:50_000])  # cut short, as a copy that stopped halfway

    files = {file["filename"]: file for file in client.get("/api/status/").json()["weights"]}
    assert files["autoencoder-v2.pt"]["present"] and files["autoencoder-v2.pt"]["verified"] is False
    monkeypatch.setattr(weights_module, "_reachable_sites", lambda sites, timeout: set())  # offline
    out = io.StringIO()
    call_command("fetch_weights", "--no-progress", stdout=out)  # a retrained file is no error: exit 0
    assert ("autoencoder-v2.pt (autoencoder/v2): present - not the file this release ships (its SHA-256 differs): "
            "retrained here, or damaged; if damaged, copy the project's weights/autoencoder-v2.pt there again "
            "(in a clone: `git checkout -- weights/autoencoder-v2.pt`)") in out.getvalue()
    assert target.stat().st_size == 50_000  # left as it is
    assert "autoencoder-v1.pt" not in out.getvalue()  # not a model of the profile fetch_weights looks after


@pytest.mark.django_db
def test_the_status_api_shows_the_active_models_weight_files_and_a_damaged_one_is_named_when_loaded(
        served, weights_dir, monkeypatch, settings, client, user, caplog):
    folder, url = served
    targets = point_standard_weights(monkeypatch, url, folder)
    weights_fetch(progress=False)
    settings.IMAGINAITION_MODEL_PROFILE = "standard"
    client.force_login(user)

    files = {file["filename"]: file for file in client.get("/api/status/").json()["weights"]}
    active = registry.active_models()
    assert {file["model_key"] for file in files.values()} == {active.semantic, active.content, active.segmenter}
    assert all(files[name]["present"] and files[name]["verified"] is True for name in targets)
    assert files["autoencoder-v2.pt"]["verified"] is True  # shipped: as this release ships it

    name, target = next(iter(targets.items()))
    target.write_bytes(b"another file under its name")
    files = {file["filename"]: file for file in client.get("/api/status/").json()["weights"]}
    assert files[name]["present"] and files[name]["verified"] is False

    key = next(file["model_key"] for file in files.values() if file["filename"] == name)
    spec = registry.MODELS[key]
    monkeypatch.setitem(registry.MODELS, key, replace(spec, loader="builtins:repr"))  # loads anything
    registry.unload_all()
    try:
        with caplog.at_level("WARNING", logger=registry.logger.name):
            registry.get_model(key)
    finally:
        registry.unload_all()
    assert any(str(target) in record.getMessage() and "does not match its SHA-256" in record.getMessage()
               for record in caplog.records)


def test_a_wrong_profile_is_said_before_anything_is_fetched(settings, monkeypatch):
    """It was said after the downloads (or, offline, after "standard cannot run without them")."""
    from retrieval.management.commands import fetch_weights

    def never(**kwargs):
        raise AssertionError("fetched before the profile was checked")

    monkeypatch.setattr(fetch_weights, "weights_fetch", never)
    settings.IMAGINAITION_MODEL_PROFILE = "fancy"
    with pytest.raises(CommandError, match="^IMAGINAITION_MODEL_PROFILE must be auto, standard or offline, not 'fancy'$"):
        call_command("fetch_weights")


@pytest.mark.django_db
def test_make_runs_one_off_commands_fetch_the_standard_weights_before_migrate_whose_checks_need_them(
        served, weights_dir, monkeypatch, settings):
    """The one-off chain (scripts/run.sh, DEPLOYMENT.md) ran `migrate` first: with the standard profile asked
    for and no weights yet, its system checks stopped it (retrieval.E002) before fetch_weights could run."""
    from django.core.management.base import SystemCheckError

    folder, url = served
    point_standard_weights(monkeypatch, url, folder)
    settings.IMAGINAITION_MODEL_PROFILE = "standard"
    with pytest.raises(SystemCheckError, match="retrieval.E002"):
        call_command("migrate", "--noinput", skip_checks=False, verbosity=0)  # why the order matters

    script = (Path(__file__).resolve().parents[2] / "scripts" / "run.sh").read_text()
    commands = [name for name in re.findall(r"^\$PY manage\.py (\w+)", script, flags=re.MULTILINE)
                if name in ("fetch_weights", "migrate")]
    assert commands == ["fetch_weights", "migrate"]
    call_command("fetch_weights", "--no-progress", verbosity=0)  # in the script's order: each succeeds
    call_command("migrate", "--noinput", skip_checks=False, verbosity=0)
    deployment = (Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md").read_text()
    assert "`python manage.py fetch_weights && python manage.py migrate --noinput && " in deployment
