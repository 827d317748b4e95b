"""What DeepLabV3-ResNet101 costs per picture on this machine, and which execution options keep its masks.

    python -m bench.segmentation [--n 8] [--batch 4] [--no-write]

The standard segmenter at its 520x520 input, on --n real photos (bench.common.bench_photos), run as the
pipeline runs it (`DeepLabSegmenter.segment`: preprocess, forward, softmax, masks at the picture's size),
once per execution option after a warm-up batch, one process, every core (torch's thread count),
glibc malloc reusing large blocks as the workers do (imaginaition_site/malloc.py):
- fp32, one picture per call (what a batch of 1 costs) and --batch pictures per call (inference mode);
- channels-last memory format; bf16 autocast (CPUs with AVX512-BF16 or AMX run it natively);
  channels-last + bf16; torch.compile (inductor) of the fp32 model;
- OpenVINO (IMAGINAITION_SEGMENTER_RUNTIME=openvino): the same network converted once (the conversion's
  time is noted) and run by OpenVINO's CPU runtime in fp32;
- int8 post-training quantization (torch's FX graph mode, x86 backend), calibrated on the same pictures:
  measured only, not a product option (see docs/BENCHMARKS.md);
- the segmenter as the registry loads it now (runtime torch, precision auto: decided on its warm-up batch).
Each option's masks are compared with fp32's on the same pictures: the IoU of each label's mask
(probability >= 0.5) over the labels either finds, and the labels found by one and not the other. An
option is usable when every mask's IoU >= 0.98 (the issue's bar). The weights are the real file when
weights/ has it, else random weights of the same shapes (same cost; random logits are close to each
other, so the IoU bar is harder to meet than with trained weights).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import bench_photos, describe_photos, load_average, setup_django, table, write_section

IOU_BAR = 0.98


class Int8DeepLab:
    """DeepLabV3's forward pass (backbone, head, upsampling) over the separately quantized parts."""

    def __init__(self, backbone, head) -> None:
        self.backbone, self.head = backbone, head

    def __call__(self, pictures):
        import torch.nn.functional as F

        logits = self.head(self.backbone(pictures.contiguous())["out"])
        return {"out": F.interpolate(logits, size=pictures.shape[-2:], mode="bilinear", align_corners=False)}


def mask_agreement(reference: list[list], other: list[list]) -> tuple[float, float, int]:
    """(mean IoU, worst IoU, labels found by only one) of two segmentations of the same pictures."""
    from retrieval.encoders.precision import mask_ious

    ious, unmatched = mask_ious(reference, other)
    return (sum(ious) / len(ious), min(ious), unmatched) if ious else (1.0, 1.0, unmatched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="photos to segment per option")
    parser.add_argument("--batch", type=int, default=8, help="pictures per call in the batched options")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    from imaginaition_site.malloc import reuse_large_blocks

    reuse_large_blocks()  # as the worker processes that segment do
    setup_django()

    import torch
    from django.test import override_settings

    from gallery.imaging import picture_for_models
    from retrieval.encoders.catalog import DEEPLABV3_RESNET101
    from retrieval.encoders.deeplab import DeepLabSegmenter, build_model

    folder, facts = bench_photos(n=args.n)
    pictures = [picture_for_models((folder / item["file"]).read_bytes()) for item in facts["files"][: args.n]]
    weights = DEEPLABV3_RESNET101.weight_path()
    model = build_model()
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        weights_note = "the real weights (weights/)"
    else:
        torch.manual_seed(0)
        model = build_model()
        weights_note = "random weights (seed 0) of the same shapes: the real file is not here"
        # A file of them: the OpenVINO conversion is named after the weight file it was made from.
        weights = Path(tempfile.mkdtemp(prefix="bench-segmentation-")) / DEEPLABV3_RESNET101.weights[0].filename
        torch.save(model.state_dict(), weights)
    model.eval()
    load_before = load_average()

    def run(segmenter: DeepLabSegmenter, batch: int, context: Callable[[], contextlib.AbstractContextManager]):
        with context():
            segmenter.segment(pictures[:batch])  # warm-up (and, for torch.compile, the compilation)
            masks: list[list] = []
            began = time.perf_counter()
            for start in range(0, len(pictures), batch):
                masks += segmenter.segment(pictures[start:start + batch])
            return masks, (time.perf_counter() - began) / len(pictures)

    def bf16() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    @contextlib.contextmanager
    def fp32() -> Iterator[None]:
        yield

    key = DEEPLABV3_RESNET101.key
    state = model.state_dict()

    def variant(*, channels_last: bool = False, freeze: bool = False, compile: bool = False,
                aux: bool = False, fold: bool = False) -> DeepLabSegmenter:
        """The segmenter with these execution options, in fp32 unless a row's context says otherwise, and
        the bench's loop deciding how many pictures go into one call; batch norms unfolded unless `fold`."""
        network = build_model().eval()
        network.load_state_dict(state)
        if not aux:
            network.aux_classifier = None
        if freeze:  # TorchScript: batch norm folded into the convolutions, oneDNN weight layouts
            with torch.inference_mode():
                traced = torch.jit.trace(network, torch.zeros(1, 3, 520, 520), strict=False)
                network = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        if compile:
            network = torch.compile(network)
        with override_settings(IMAGINAITION_PRECISION="fp32"):
            segmenter = DeepLabSegmenter(key=key, model=network, fold_norms=fold, memory_format=(
                torch.channels_last if channels_last else torch.contiguous_format))
        if aux:  # the segmenter drops the head; put it back to measure what it cost
            aux_head = build_model().eval()
            aux_head.load_state_dict(state)
            segmenter.model.aux_classifier = aux_head.aux_classifier
        segmenter.pictures_per_pass = None
        return segmenter

    def shipped(runtime: str = "torch", precision: str = "auto") -> DeepLabSegmenter:
        """As the registry loads it now (default runtime and precision), or with the runtime given."""
        network = build_model().eval()
        network.load_state_dict(state)
        with override_settings(IMAGINAITION_PRECISION=precision, IMAGINAITION_SEGMENTER_RUNTIME=runtime):
            return DeepLabSegmenter(key=key, model=network, weights=weights)

    def openvino() -> DeepLabSegmenter:
        return shipped(runtime="openvino", precision="fp32")

    def int8() -> DeepLabSegmenter:
        """Post-training int8 (torch's FX graph mode, x86 backend: VNNI where the CPU has it), calibrated
        on the bench's own pictures; measured only: the product does not offer it."""
        import warnings

        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        from retrieval.encoders.deeplab import preprocess

        torch.backends.quantized.engine = "x86"
        segmenter = variant()
        network = segmenter.model
        mapping = get_default_qconfig_mapping("x86")
        with warnings.catch_warnings():  # torch points FX quantization users at torchao
            warnings.simplefilter("ignore")
            backbone = prepare_fx(network.backbone, mapping, example_inputs=(torch.zeros(1, 3, 520, 520),))
            head = prepare_fx(network.classifier, mapping, example_inputs=(torch.zeros(1, 2048, 65, 65),))
            with torch.inference_mode():
                for picture in preprocess(pictures):
                    head(backbone(picture[None])["out"])
            segmenter.model = Int8DeepLab(convert_fx(backbone), convert_fx(head))
        return segmenter

    plain = variant()
    b = args.batch
    options: list[tuple[str, Callable[[], DeepLabSegmenter], int, Callable]] = [
        (f"before: fp32, auxiliary head, {b} per call (the pipeline's batch)", lambda: variant(aux=True), b, fp32),
        ("fp32, auxiliary head, 1 per call", lambda: variant(aux=True), 1, fp32),
        (f"fp32, no auxiliary head, {b} per call", lambda: plain, b, fp32),
        ("fp32, no auxiliary head, 1 per call", lambda: plain, 1, fp32),
        ("channels-last, 1 per call", lambda: variant(channels_last=True), 1, fp32),
        ("TorchScript frozen (optimize_for_inference), 1 per call", lambda: variant(freeze=True), 1, fp32),
        ("torch.compile (inductor), 1 per call", lambda: variant(compile=True), 1, fp32),
        ("batch norms folded into the convolutions, 1 per call", lambda: variant(fold=True), 1, fp32),
        ("batch norms folded + channels-last, 1 per call", lambda: variant(fold=True, channels_last=True), 1, fp32),
        ("bf16 autocast, 1 per call", lambda: plain, 1, bf16),
        ("channels-last + bf16 autocast, 1 per call", lambda: variant(channels_last=True), 1, bf16),
        ("OpenVINO fp32 (the same network converted), 1 per call", openvino, 1, fp32),
        ("int8, post-training (torch FX, x86 backend), calibrated on these pictures, 1 per call", int8, 1, fp32),
        (f"now, as loaded (torch, one per pass, no auxiliary head, batch norms folded, channels-last on a CPU, "
         f"precision auto), {b} per call", shipped, b,
         fp32),
    ]
    from retrieval.encoders.precision import cpu_supports_bf16

    notes = []
    if not cpu_supports_bf16():  # emulated bf16 is ~10x slower than fp32 (measured 2026-11-29): not a choice
        options = [option for option in options if option[3] is not bf16]
        notes.append("The bf16 rows are left out: this CPU has no native bf16 (AVX512-BF16 or AMX), and emulated "
                     "bf16 took 40-49 s per picture here (2026-11-29), ~10x fp32; the segmenter never tries it on "
                     "such a CPU.")
    rows = []
    reference = None
    baseline = None
    for name, make, batch, context in options:
        try:
            began = time.perf_counter()
            segmenter = make()
            masks, seconds = run(segmenter, batch, context)
            setup = time.perf_counter() - began - seconds * len(pictures)
        except Exception as exc:  # noqa: BLE001 - an option this machine cannot run is a result too
            notes.append(f"{name} failed here: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            print(notes[-1], flush=True)
            continue
        reference = reference or masks
        baseline = baseline or seconds
        rows.append((name, seconds, masks))
        if make in (shipped, openvino):
            decided = segmenter.openvino.describe() if segmenter.openvino else segmenter.precision.describe()
            notes.append(f"{name}: decided on its warm-up batch: {decided}.")
        if setup > 20:
            notes.append(f"{name}: preparation and the first call took {setup:.0f} s once.")
        print(f"{name}: {seconds * 1000:.0f} ms/picture", flush=True)
    compile_note = " ".join(notes)

    assert reference is not None and baseline is not None
    table_rows = []
    for name, seconds, masks in rows:
        mean_iou, worst_iou, unmatched = mask_agreement(reference, masks)
        usable = worst_iou >= IOU_BAR and unmatched == 0
        table_rows.append([name, round(seconds * 1000), round(baseline / seconds, 2), round(mean_iou, 4),
                           round(worst_iou, 4), unmatched, "yes" if usable else "no"])
    masks_found = sum(len(m) for m in reference)
    body = (f"DeepLabV3-ResNet101 (`{key}`) at 520x520, {weights_note}; {torch.get_num_threads()} torch threads; "
            f"{len(pictures)} photos ({describe_photos(facts, len(pictures))}), {masks_found} masks at fp32; "
            f"glibc malloc reusing large blocks, as the workers do (imaginaition_site/malloc.py). "
            f"Each option after a warm-up call, masks compared with fp32, one picture per call (IoU of each "
            f"label's mask at probability 0.5; usable: every IoU >= {IOU_BAR} and the same labels). The OpenVINO row "
            f"runs the network converted by OpenVINO from the same weights (converted once per weight file; the "
            f"conversion's time is in the notes). The last row is the segmenter as the registry builds it now: torch "
            f"(IMAGINAITION_SEGMENTER_RUNTIME's default), where with IMAGINAITION_PRECISION=auto bf16 is kept only "
            f"if every mask agrees (IoU >= {IOU_BAR}); the OpenVINO row's segmenter keeps OpenVINO only if its first "
            f"picture's masks agree with torch fp32's.\n\n"
            + table(["option", "ms / picture", "speed-up", "mean IoU", "worst IoU", "labels differing",
                     "usable"], table_rows)
            + f"\n\n{compile_note} Load average at the start {load_before}, at the end {load_average()}; "
              f"whole benchmark {(time.perf_counter() - started) / 60:.1f} min.\n")
    print(body)
    if not args.no_write:
        write_section("Segmentation cost", "python -m bench.segmentation", body)


if __name__ == "__main__":
    main()
