"""Where models run (IMAGINAITION_DEVICE), each process's share of the CPU threads, and indexes that
are ready when the workers finish."""

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from retrieval.encoders import registry
from retrieval.encoders.autoencoder import AutoencoderEncoder, load_checkpoint
from retrieval.encoders.devices import model_device, resolve_device, thread_share
from retrieval.models import IndexState
from tests.conftest import wait_for
from tests.retrieval.test_pipeline import upload

ACCELERATORS = [torch.device("cuda")] if torch.cuda.is_available() else []


def test_the_device_setting_is_resolved_or_refused_with_the_reason():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ImproperlyConfigured, match="one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ImproperlyConfigured, match="no CUDA device"):
            resolve_device("cuda")


def test_each_process_takes_its_share_of_the_cores():
    assert thread_share(2, cores=2) == 1
    assert thread_share(4, cores=2) == 1  # at least one
    assert thread_share(1, cores=16) == 16
    assert thread_share(3, cores=16) == 5


@pytest.mark.gpu
@pytest.mark.parametrize("device", [torch.device("cpu"), *ACCELERATORS], ids=str)
def test_models_run_on_the_device_and_agree_with_the_cpu(device):
    """On a CUDA machine this places the autoencoder on the GPU and compares it with the CPU; on
    CPU-only machines the same checks run on the CPU."""
    from skimage import data as skdata

    model, checkpoint = load_checkpoint(registry.MODELS["autoencoder/v2"].weight_path())
    pictures = [PILImage.fromarray(getattr(skdata, name)()).convert("RGB") for name in ("chelsea", "coffee")]
    on_cpu = AutoencoderEncoder(key="cpu", model=load_checkpoint(registry.MODELS["autoencoder/v2"].weight_path())[0],
                                mean=checkpoint["mean"], std=checkpoint["std"], device=torch.device("cpu"))
    placed = AutoencoderEncoder(key="placed", model=model, mean=checkpoint["mean"], std=checkpoint["std"], device=device)
    assert {p.device.type for p in placed.model.parameters()} == {device.type}
    a, b = on_cpu.encode_images(pictures), placed.encode_images(pictures)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.django_db
def test_the_registry_loads_models_onto_the_process_device_and_the_status_says_which(client, user, settings):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    models = registry.active_models()
    semantic, content = registry.get_model(models.semantic), registry.get_model(models.content)
    assert semantic.network.device.type == model_device().type
    assert {p.device.type for p in content.model.parameters()} == {model_device().type}
    client.force_login(user)
    status = client.get(reverse("api-status")).json()
    assert status["device"] == str(model_device()) and status["torch_threads"] >= 1


@pytest.mark.integration
def test_an_import_by_workers_ends_with_its_indexes_built_without_any_query(client, user, media_root, settings,
                                                                             tmp_path, start_worker):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    worker = start_worker(IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_MEDIA_ROOT=str(media_root),
                          IMAGINAITION_INDEX_DIR=str(tmp_path / "indexes"), IMAGINAITION_WORKERS="1")
    client.force_login(user)
    ids = [upload(client, name) for name in ("chelsea", "coffee")]

    def done() -> bool:
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        return Image.objects.filter(pk__in=ids, status="ready", masks_status="ready").count() == 2

    wait_for(done, timeout=240, interval=1, message="the worker to process the uploads")
    wait_for(lambda: IndexState.objects.filter(owner="image").exclude(file_name="").count() == 2, timeout=60,
             interval=0.5, message="the worker to build the image indexes")
    status = client.get(reverse("api-status")).json()  # no search has run in any process
    assert status["integrity"]["state"] == "ok", [(h["owner"], h["space"], h["state"], h["database_count"], h["index_count"], h["version"]) for h in status["integrity"]["indexes"]]
    ping = client.post(reverse("api-worker-check")).json()["task_id"]
    result = wait_for(lambda: client.get(reverse("api-worker-check-result", args=[ping])).json().get("result"),
                      timeout=60, message="the worker to answer")
    assert result["torch_threads"] == thread_share(1) and result["device"] == str(model_device())
