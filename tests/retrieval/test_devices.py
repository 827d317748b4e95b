"""Where models run (IMAGINAITION_DEVICE), each process's share of the CPU threads, and indexes that
are ready when the workers finish."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from retrieval.encoders import registry
from retrieval.encoders.autoencoder import AutoencoderEncoder, load_checkpoint
from retrieval.encoders.devices import DEVICE_BATCH_SIZES, batch_size, model_device, resolve_device, thread_share
from retrieval.models import IndexState
from tests.conftest import REPO, wait_for
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


def test_the_batch_is_the_devices_unless_the_setting_says_otherwise(settings):
    settings.IMAGINAITION_BATCH_SIZE = None
    settings.IMAGINAITION_DEVICE = "cpu"
    assert batch_size() == DEVICE_BATCH_SIZES["cpu"] == 16
    if ACCELERATORS:
        settings.IMAGINAITION_DEVICE = "cuda"
        assert batch_size() == DEVICE_BATCH_SIZES["cuda"] > 16
    settings.IMAGINAITION_BATCH_SIZE = 5
    assert batch_size() == 5


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
    segmenter = registry.get_model(models.segmenter)
    assert semantic.network.device.type == model_device().type
    assert segmenter.network is semantic.network  # the offline segmenter: the same network, so the same device
    assert semantic.text_model.device.type == model_device().type  # MiniLM, the text tower
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
    # No search runs in any process. From the moment the work is done the status reads "building
    # index" until the worker's indexes are there, then ok: never "index missing".
    seen: list[str] = []

    def indexes_ready() -> dict | None:
        integrity = client.get(reverse("api-status")).json()["integrity"]
        seen.append(integrity["state"])
        return integrity if integrity["state"] == "ok" else None

    integrity = wait_for(indexes_ready, timeout=60, interval=0.2, message="the worker's indexes")
    assert set(seen) <= {"building index", "ok"}, seen
    indexed = {(h["owner"], h["space"]) for h in integrity["indexes"] if h["database_count"]}
    assert {("image", "semantic"), ("image", "content")} <= indexed
    assert IndexState.objects.exclude(file_name="").count() == len(indexed)
    ping = client.post(reverse("api-worker-check")).json()["task_id"]
    result = wait_for(lambda: client.get(reverse("api-worker-check-result", args=[ping])).json().get("result"),
                      timeout=60, message="the worker to answer")
    assert result["torch_threads"] == thread_share(1) and result["device"] == str(model_device())


def test_a_web_process_starts_quietly_with_its_share_of_the_cores():
    # As gunicorn loads the application (argv[0] is how the app tells a web process).
    code = ("import sys; sys.argv = ['gunicorn']; import imaginaition_site.wsgi, torch; "
            "print('torch threads', torch.get_num_threads())")
    env = {name: value for name, value in os.environ.items() if name != "IMAGINAITION_TORCH_THREADS"}
    env.update(IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_DEVICE="cpu", IMAGINAITION_WEB_PROCESSES="2")
    started = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, started.stderr
    assert f"torch threads {thread_share(2)}" in started.stdout  # its share, not torch's default (every core)
    log = started.stderr.splitlines()
    said = [line for line in log if "model profile" in line]
    assert len(said) == 1 and "model profile offline: semantic " in said[0] and "device cpu" in said[0], log
    assert not [line for line in log if "faiss" in line.lower() or "AVX" in line], log


def _autocast_on(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type)


def test_half_precision_that_changes_the_results_falls_back_to_fp32_for_good(settings):
    from retrieval.encoders.precision import PrecisionChoice, half_dtype, vectors_agreement

    calls: list[bool] = []

    def forward() -> np.ndarray:  # a model whose half precision answer points elsewhere
        calls.append(_autocast_on("cpu"))
        return np.array([[0.0, 1.0]] if calls[-1] else [[1.0, 0.0]], dtype=np.float32)

    choice = PrecisionChoice(key="m", device=torch.device("cpu"), dtype=torch.bfloat16,
                             agreement=vectors_agreement, bar=0.999)
    assert choice.run(forward).tolist() == [[1.0, 0.0]]  # the first batch answers in fp32 ...
    assert calls == [False, True] and choice.measured == 0.0 and choice.name == "fp32"
    assert choice.run(forward).tolist() == [[1.0, 0.0]] and calls[-1] is False  # ... and stays there
    assert "fp32" in choice.describe()

    settings.IMAGINAITION_PRECISION = "fp32"
    assert half_dtype(torch.device("cpu"), pays_on_cpu=True) is None
    settings.IMAGINAITION_PRECISION = "half"
    with pytest.raises(ImproperlyConfigured, match="auto, fp32"):
        half_dtype(torch.device("cpu"), pays_on_cpu=True)


def test_masks_agree_only_with_the_same_labels_and_overlapping_pixels():
    from retrieval.encoders.base import SoftMask
    from retrieval.encoders.precision import masks_agreement

    square = np.zeros((10, 10), dtype=np.float32)
    square[:5, :5] = 1.0
    shifted = np.roll(square, 1, axis=1)
    cat = SoftMask(label="cat", class_index=8, probability=square)
    assert masks_agreement([[cat]], [[cat]]) == 1.0
    assert masks_agreement([[cat]], [[SoftMask("cat", 8, shifted)]]) == pytest.approx(20 / 30)
    assert masks_agreement([[cat]], [[SoftMask("dog", 12, square)]]) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("device", [torch.device("cpu"), *ACCELERATORS], ids=str)
def test_half_precision_is_kept_only_where_it_agrees_with_fp32(device):
    """On a CUDA machine: the device's half precision; on the CPU: bf16 autocast (the same check)."""
    from skimage import data as skdata

    from retrieval.encoders.precision import VECTOR_COSINE_BAR, PrecisionChoice, vectors_agreement

    model, checkpoint = load_checkpoint(registry.MODELS["autoencoder/v2"].weight_path())
    pictures = [PILImage.fromarray(getattr(skdata, name)()).convert("RGB") for name in ("chelsea", "coffee", "astronaut")]
    encoder = AutoencoderEncoder(key="ae", model=model, mean=checkpoint["mean"], std=checkpoint["std"], device=device)
    reference = encoder.encode_images(pictures)  # fp32: the autoencoder tries no half precision on a CPU
    half = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    encoder.precision = PrecisionChoice(key="ae", device=device, dtype=half, agreement=vectors_agreement,
                                        bar=VECTOR_COSINE_BAR)
    first = encoder.encode_images(pictures)
    assert np.array_equal(first, reference)  # the deciding batch answers in fp32
    assert encoder.precision.decided and encoder.precision.measured is not None
    kept = encoder.precision.measured >= VECTOR_COSINE_BAR
    assert (encoder.precision.dtype is not None) == kept
    later = encoder.encode_images(pictures)
    assert vectors_agreement(reference, later) >= (VECTOR_COSINE_BAR if kept else 1.0 - 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("device", [torch.device("cpu"), *ACCELERATORS], ids=str)
def test_the_offline_segmenter_reads_its_masks_from_a_half_precision_pass(device, settings):
    """The class activation maps come out of a pass that may run in half precision (on an accelerator,
    the device's): the masks are still computed and returned in fp32, and the first batch decides."""
    from skimage import data as skdata

    from retrieval.encoders import offline
    from retrieval.encoders.precision import MASK_IOU_BAR, PrecisionChoice, masks_agreement

    settings.IMAGINAITION_DEVICE = device.type
    segmenter = offline.load_segmenter(registry.MODELS["offline/effnet-lite2-cam"])
    assert segmenter.network.device.type == device.type
    pictures = [PILImage.fromarray(getattr(skdata, name)()).convert("RGB") for name in ("chelsea", "coffee", "astronaut")]
    reference = segmenter.segment(pictures)  # fp32 (the tests' setting)
    assert any(reference)
    half = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    segmenter.precision = PrecisionChoice(key="cam", device=device, dtype=half, agreement=masks_agreement,
                                          bar=MASK_IOU_BAR)
    first = segmenter.segment(pictures)  # the deciding batch: half precision tried, fp32 answered
    assert [[(m.label, m.probability.tolist()) for m in masks] for masks in first] == \
        [[(m.label, m.probability.tolist()) for m in masks] for masks in reference]
    assert segmenter.precision.decided and segmenter.precision.measured is not None
    kept = segmenter.precision.measured >= MASK_IOU_BAR
    assert (segmenter.precision.dtype is not None) == kept
    later = segmenter.segment(pictures)
    assert {mask.probability.dtype for masks in later for mask in masks} == {np.dtype(np.float32)}
    assert masks_agreement(reference, later) >= (MASK_IOU_BAR if kept else 1.0)


FORKED_WORKER = """
import multiprocessing, torch
from retrieval.encoders.devices import resolve_device

device = resolve_device("auto")  # what the cluster process does at start, before it forks its workers

def worker(results):
    results.put(float((torch.ones(3, device=device) * 2).sum()))

context = multiprocessing.get_context("fork")  # how django-q2 starts its workers
results = context.Queue()
process = context.Process(target=worker, args=(results,))
process.start()
process.join(120)
print(device.type, process.exitcode, results.get(timeout=5) if process.exitcode == 0 else None)
"""


@pytest.mark.gpu
def test_a_worker_forked_after_the_device_check_can_still_use_the_device():
    """django-q2 forks its workers from the cluster process, which has checked the device at start: that
    check must not initialize CUDA, or no forked worker could use the GPU."""
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-c", FORKED_WORKER], cwd=REPO, capture_output=True, text=True, timeout=300)
    expected = resolve_device("auto").type
    assert done.stdout.split() == [expected, "0", "6.0"], done.stdout + done.stderr
