"""Our content autoencoder: shapes, batching, the shipped weights, the training command."""

import io

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from PIL import Image as PILImage
from skimage import data as skdata

from retrieval.autoencoder_training import autoencoder_train, heldout_loss_of
from retrieval.encoders import registry
from retrieval.encoders.autoencoder import (
    AutoencoderEncoder,
    ConvAutoencoder,
    load_checkpoint,
)

# Photos kept out of the shipped model's training data (weights/README.md).
HELDOUT = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture(scope="module")
def shipped():
    return registry.get_model("autoencoder/v1")


def photos(names=HELDOUT):
    return [PILImage.fromarray(getattr(skdata, name)()) for name in names]


def test_embeddings_are_1024_float32_rows_with_l1_norm_one(shipped):
    grey = PILImage.fromarray(skdata.camera()).convert("RGB")
    translucent = PILImage.new("RGBA", (33, 21), (200, 10, 10, 90)).convert("RGB")
    pictures = photos() + [PILImage.new("RGB", (17, 300), (10, 200, 30)), grey, translucent]
    vectors = shipped.encode_images(pictures)
    assert vectors.shape == (7, 1024) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.abs(vectors).sum(axis=1), 1.0, rtol=1e-5)
    assert shipped.key == "autoencoder/v1" and shipped.space == "content" and shipped.dim == 1024


def test_a_batch_is_one_forward_pass(shipped):
    calls = []
    handle = shipped.model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        shipped.encode_images(photos() * 3)
    finally:
        handle.remove()
    assert calls == [12]


def test_similar_pictures_are_nearer_than_different_ones(shipped):
    chelsea, coffee = photos(("chelsea", "coffee"))
    flipped = chelsea.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT).resize((400, 266))
    a, b, c = shipped.encode_images([chelsea, flipped, coffee])
    assert np.abs(a - b).sum() < np.abs(a - c).sum()


def test_shipped_weights_reconstruct_heldout_photos_far_better_than_untrained(shipped):
    untrained = ConvAutoencoder().eval()
    trained_loss = heldout_loss_of(shipped.model, shipped.mean, shipped.std, photos())
    untrained_loss = heldout_loss_of(untrained, shipped.mean, shipped.std, photos())
    assert trained_loss < 0.5 * untrained_loss, (trained_loss, untrained_loss)


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("colorwheel", "immunohistochemistry", "hubble_deep_field"):
        PILImage.fromarray(getattr(skdata, name)()).resize((160, 160)).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_train_command_writes_a_loadable_checkpoint_deterministically(tiny_folder, tmp_path):
    outs, errors = [], io.StringIO()
    for run in range(2):
        out = tmp_path / f"ae-{run}.pt"
        call_command("train_autoencoder", "--data", str(tiny_folder), "--epochs", "1", "--crops-per-image", "4",
                     "--batch-size", "8", "--out", str(out), stdout=io.StringIO(), stderr=errors, verbosity=0)
        outs.append(out)
    assert "broken.jpg" in errors.getvalue()  # skipped, named, not a crash
    model, checkpoint = load_checkpoint(outs[0])
    assert len(checkpoint["mean"]) == 3 and len(checkpoint["std"]) == 3
    assert checkpoint["meta"]["epochs"] == 1 and checkpoint["meta"]["heldout_loss"] > 0
    encoder = AutoencoderEncoder(key="test", model=model, mean=checkpoint["mean"], std=checkpoint["std"])
    assert encoder.encode_images(photos(("coffee",))).shape == (1, 1024)
    second = torch.load(outs[1], weights_only=True)["state_dict"]
    assert all(torch.equal(value, second[name]) for name, value in checkpoint["state_dict"].items())


def test_the_seed_decides_the_weights(tiny_folder, tmp_path):
    def train(seed: int) -> float:
        return autoencoder_train(data_dir=tiny_folder, out=tmp_path / f"seed-{seed}.pt", epochs=1, batch_size=8,
                                 seed=seed, crops_per_image=2, progress=False).train_loss
    assert train(0) == train(0) != train(1)


def test_train_command_names_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(CommandError, match="missing-folder"):
        call_command("train_autoencoder", "--data", str(tmp_path / "missing-folder"))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(CommandError, match="empty-folder.*no readable images"):
        call_command("train_autoencoder", "--data", str(empty), "--out", str(tmp_path / "never.pt"))
    assert not (tmp_path / "never.pt").exists()
