"""Load a `.safetensors` checkpoint into a built model tensor by tensor, reading each straight into the
parameter's memory with plain file reads.

`safetensors.torch.load_file` (what open_clip uses) first builds a second copy of every weight, and
even safetensors' lazy `safe_open` maps the file, whose touched pages count in the process's resident
set until it is closed: either way the process briefly holds the weights twice (bench.memory measured a
523 MiB peak above the steady state for CLIP ViT-B-32). The format is simple (an 8-byte header length,
a JSON header of name -> dtype, shape, byte range, then the raw little-endian data), so reading it
directly keeps the peak at the model's own size.

A large embedding table, of which a forward pass reads a few rows, can instead stay in the file
(`mapped`): the parameter becomes a private (copy-on-write) mapping of its bytes, and only the pages
a pass reads become resident. CLIP's 49,408 token embeddings are 97 MiB of which a text query reads a
few dozen rows; image queries none.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Collection
from pathlib import Path

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def large_embedding_tables(model: torch.nn.Module, *, min_bytes: int = 16 << 20) -> set[str]:
    """The state names of the model's embedding tables of at least min_bytes (candidates for `mapped`)."""
    return {f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, torch.nn.Embedding)
            and module.weight.numel() * module.weight.element_size() >= min_bytes}


def safetensors_read_into(model: torch.nn.Module, path: Path, *, mapped: Collection[str] = ()) -> None:
    """Copy every tensor of the file into the model's state (names must match exactly, as a strict
    load_state_dict); converts dtypes where they differ. RuntimeError naming missing/unexpected keys.
    Parameters named in `mapped` are replaced by tensors over a private mapping of the file instead
    of copied (see the module's docstring) where dtype, device and alignment allow; else copied."""
    state = model.state_dict()
    mapping: mmap.mmap | None = None
    with open(path, "rb") as fh:
        (header_size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_size))
        header.pop("__metadata__", None)
        data_start = 8 + header_size
        missing, unexpected = sorted(set(state) - set(header)), sorted(set(header) - set(state))
        if missing or unexpected:
            raise RuntimeError(f"{path.name} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, info in header.items():
                target = state[name]
                dtype = DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                if list(target.shape) != list(info["shape"]):
                    raise RuntimeError(f"{path.name}: {name} has shape {info['shape']}, the model {list(target.shape)}")
                if end == begin:
                    continue
                if (name in mapped and dtype == target.dtype and target.device.type == "cpu"
                        and (data_start + begin) % target.element_size() == 0):
                    if mapping is None:
                        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
                        mapping.madvise(mmap.MADV_RANDOM)  # a query's rows only, not the pages around them
                    in_file = torch.frombuffer(mapping, dtype=dtype, count=(end - begin) // target.element_size(),
                                               offset=data_start + begin).reshape(info["shape"])
                    _replace_parameter(model, name, in_file)
                    continue
                fh.seek(data_start + begin)
                if dtype == target.dtype and target.is_contiguous() and target.device.type == "cpu":
                    buffer = target.reshape(-1).view(torch.uint8).numpy()  # 1-d first: a 0-d tensor cannot change its element size
                    if fh.readinto(memoryview(buffer)) != end - begin:
                        raise RuntimeError(f"{path.name} is truncated at {name}")
                else:
                    raw = bytearray(fh.read(end - begin))
                    if len(raw) != end - begin:
                        raise RuntimeError(f"{path.name} is truncated at {name}")
                    target.copy_(torch.frombuffer(raw, dtype=dtype).reshape(info["shape"]))


def _replace_parameter(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attribute, torch.nn.Parameter(tensor, requires_grad=False))
