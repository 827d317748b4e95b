"""`manage.py train_autoencoder` refuses what cannot work before it trains (numbers out of range, a checkpoint
path it could not write) and never writes weights that training left non-finite."""

import functools
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from PIL import Image as PILImage

from retrieval.autoencoder_training import autoencoder_train
from retrieval.encoders.autoencoder import ConvAutoencoder
from retrieval.management.commands import train_autoencoder as command


@pytest.fixture
def twelve_pictures(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        PILImage.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / f"{index:02}.png")
    return folder


@pytest.fixture
def no_training(monkeypatch):
    """A refusal must come before training: a run of hours must not end in it."""
    def trained(**_options):
        raise AssertionError("it trained")
    monkeypatch.setattr(command, "autoencoder_train", trained)


def train(folder, *options):
    call_command("train_autoencoder", "--data", str(folder), "--epochs", "1", "--batch-size", "4", *options,
                 stdout=io.StringIO(), stderr=io.StringIO(), verbosity=0)


@pytest.mark.parametrize(("option", "value"), [
    ("--temperature", "0"), ("--temperature", "-1"), ("--temperature", "nan"), ("--temperature", "inf"),
    ("--learning-rate", "0"), ("--learning-rate", "-0.01"),
])
def test_a_temperature_or_learning_rate_not_above_zero_is_refused_by_name(twelve_pictures, tmp_path, no_training,
                                                                            option, value):
    with pytest.raises(CommandError, match=f"argument {option}: must be more than 0, not {value}"):
        train(twelve_pictures, option, value, "--out", str(tmp_path / "never.pt"))
    assert not (tmp_path / "never.pt").exists()


def test_crops_per_image_without_crop_views_is_refused_rather_than_ignored(twelve_pictures, tmp_path, no_training):
    """It trained with two near-copy views of each picture, the option unread and unsaid."""
    with pytest.raises(CommandError, match="--crops-per-image is for --views crops; --views near-copies makes two"):
        train(twelve_pictures, "--crops-per-image", "3", "--out", str(tmp_path / "never.pt"))


def test_a_zero_temperature_is_refused_by_the_training_function_too(twelve_pictures, tmp_path):
    with pytest.raises(ValueError, match="temperature must be more than 0"):
        autoencoder_train(data_dir=twelve_pictures, out=tmp_path / "never.pt", epochs=1, batch_size=4,
                          progress=False, consistency=1.0, temperature=0.0)
    assert not (tmp_path / "never.pt").exists()


def poisoned() -> ConvAutoencoder:
    """A network whose outputs are all NaN, as one that diverged."""
    model = ConvAutoencoder()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model


def test_weights_left_non_finite_by_training_are_never_written(twelve_pictures, tmp_path, monkeypatch):
    out = tmp_path / "diverged.pt"
    with pytest.raises(ValueError, match=r"training diverged \(final train loss nan"):
        autoencoder_train(data_dir=twelve_pictures, out=out, epochs=1, batch_size=4, progress=False,
                          model_factory=poisoned)
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []
    monkeypatch.setattr(command, "autoencoder_train", functools.partial(autoencoder_train, model_factory=poisoned))
    out.write_bytes(b"an older checkpoint")
    with pytest.raises(CommandError, match=f"diverged.*nothing was written to {re.escape(str(out))}"):
        train(twelve_pictures, "--out", str(out), "--force")
    assert out.read_bytes() == b"an older checkpoint"


@pytest.mark.parametrize(("where", "force", "message"), [
    ("folder", True, "--out {out} is a folder: name the file to write, e.g. "),
    ("folder", False, "--out {out} is a folder"),
    ("in-a-file", False, "--out {out}: {parent} is a file, not a folder"),
    ("in-a-missing-folder", False, "--out {out}: {parent} is no such folder"),
    ("proc", True, "--out {out}: cannot write in /proc"),
], ids=["folder-force", "folder", "parent-is-a-file", "parent-missing", "proc"])
def test_an_unusable_out_path_is_refused_by_name_before_training(twelve_pictures, tmp_path, no_training, where, force,
                                                                 message):
    if where == "folder":
        out = tmp_path / "weights"
        out.mkdir()
    elif where == "in-a-file":
        (tmp_path / "notes.txt").write_text("a file")
        out = tmp_path / "notes.txt" / "ae.pt"
    elif where == "in-a-missing-folder":
        out = tmp_path / "missing" / "ae.pt"
    else:
        out = Path("/proc/x.pt")
    expected = message.format(out=out, parent=out.parent)
    with pytest.raises(CommandError) as refused:
        train(twelve_pictures, "--out", str(out), *(["--force"] if force else []))
    assert str(refused.value).startswith(expected), str(refused.value)
    assert "content vectors were computed with it" not in str(refused.value)


def test_an_existing_file_of_ones_own_is_kept_without_force_and_named(twelve_pictures, tmp_path, no_training):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"an older checkpoint")
    with pytest.raises(CommandError, match=f"^{re.escape(str(out))} exists: add --force to replace it"):
        train(twelve_pictures, "--out", str(out))
    assert out.read_bytes() == b"an older checkpoint"


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5", "nan"])
def test_a_heldout_fraction_out_of_its_range_is_refused_at_parsing(twelve_pictures, tmp_path, no_training, value):
    with pytest.raises(CommandError,
                       match=f"argument --heldout-fraction: must be more than 0 and below 1, not {value}"):
        train(twelve_pictures, "--heldout-fraction", value, "--out", str(tmp_path / "never.pt"))


def test_a_heldout_fraction_that_leaves_no_training_picture_is_refused(twelve_pictures, tmp_path):
    out = tmp_path / "never.pt"
    with pytest.raises(CommandError, match=r"photos: a held-out fraction of 0\.99 holds out 12 of the 12 readable "
                                           r"pictures, leaving none to train on"):
        train(twelve_pictures, "--heldout-fraction", "0.99", "--out", str(out))
    assert not out.exists()


def test_a_small_heldout_fraction_still_holds_one_picture_out_and_trains_on_the_rest(twelve_pictures, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        report = autoencoder_train(data_dir=twelve_pictures, out=tmp_path / "ae.pt", epochs=1, batch_size=4,
                                   progress=False, heldout_fraction=0.01)
    finally:
        os.umask(umask)
    assert (report.heldout_images, report.images) == (1, 11)
    # Readable by the service's account, as the shipped files are (it was -rw-------, mkstemp's mode).
    assert stat.S_IMODE((tmp_path / "ae.pt").stat().st_mode) == 0o644
    report = autoencoder_train(data_dir=twelve_pictures, out=tmp_path / "ae.pt", epochs=1, batch_size=4,
                               progress=False, heldout_fraction=0.95)
    assert (report.heldout_images, report.images) == (11, 1)
