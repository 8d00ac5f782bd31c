"""PyTorch models as federated tasks: an `nn.Sequential` of the layers the
node trains becomes a task's `[model]` table and its initial weights, as
safetensors named as the node names them (`layers.{i}.weight`, `.bias`:
nn.Sequential's own state_dict names, prefixed). A layer the node cannot
train is refused by its index and name, with what to use instead.

    from yilian.pytorch import from_sequential
    converted = from_sequential(net, input_shape=[64])
    task = {..., "model": converted.model}
    engineer.submit(task, validation, initial_weights=converted.weights)

torch is needed only here (`pip install torch`); the rest of the SDK runs
without it.
"""

import json
import struct
from dataclasses import dataclass

SPEC_VERSION = 1
SPEC_KEY = "yilian.model_spec"


class UnsupportedLayer(ValueError):
    """A layer of the Sequential the node cannot train as it is."""


@dataclass(frozen=True)
class Converted:
    #: The task's `[model]` table: `input` and `layers`.
    model: dict
    #: Initial weights, safetensors, with the spec in its metadata.
    weights: bytes


def _pair(v, what: str, i: int, name: str) -> int:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if a != b:
        raise UnsupportedLayer(f"layer {i} ({name}): {what} {v} is not square; the node takes square ones")
    return a


def _layer(i: int, m, nn) -> tuple[object, list]:
    """The spec entry for module `m` and the tensors it owns, in order."""
    name = type(m).__name__
    if isinstance(m, nn.Linear):
        if m.bias is None:
            raise UnsupportedLayer(f"layer {i} (Linear): bias=False; the node's linear layers have a bias")
        return {"linear": {"out": m.out_features}}, [("weight", m.weight), ("bias", m.bias)]
    if isinstance(m, nn.Conv2d):
        kernel = _pair(m.kernel_size, "kernel", i, name)
        if _pair(m.stride, "stride", i, name) != 1 or _pair(m.dilation, "dilation", i, name) != 1:
            raise UnsupportedLayer(f"layer {i} (Conv2d): the node convolves with stride 1 and dilation 1")
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedLayer(
                f"layer {i} (Conv2d): use groups=1 and a numeric zero padding (padding_mode='zeros')"
            )
        if m.bias is None:
            raise UnsupportedLayer(f"layer {i} (Conv2d): bias=False; the node's convolutions have a bias")
        padding = _pair(m.padding, "padding", i, name)
        spec = {"conv2d": {"out_channels": m.out_channels, "kernel": kernel, "padding": padding}}
        return spec, [("weight", m.weight), ("bias", m.bias)]
    if isinstance(m, nn.ReLU):
        return "relu", []
    if isinstance(m, nn.MaxPool2d):
        size = _pair(m.kernel_size, "kernel", i, name)
        stride = size if m.stride is None else _pair(m.stride, "stride", i, name)
        if stride != size or _pair(m.padding, "padding", i, name) != 0 or _pair(m.dilation, "dilation", i, name) != 1 or m.ceil_mode:
            raise UnsupportedLayer(
                f"layer {i} (MaxPool2d): the node pools with stride = kernel, no padding, dilation 1, ceil_mode=False"
            )
        return {"max_pool": {"size": size}}, []
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedLayer(f"layer {i} (Flatten): the node flattens everything but the batch (start_dim=1, end_dim=-1)")
        return "flatten", []
    if isinstance(m, nn.Dropout):
        return {"dropout": {"p": float(m.p)}}, []
    if isinstance(m, nn.Softmax):
        if m.dim not in (1, -1):
            raise UnsupportedLayer(f"layer {i} (Softmax): the node applies softmax over the classes (dim=1)")
        return "softmax", []
    raise UnsupportedLayer(
        f"layer {i} ({name}) is not one the node trains; use Linear, Conv2d, ReLU, MaxPool2d, Flatten, Dropout or Softmax"
    )


def safetensors_bytes(tensors: list[tuple[str, list[int], bytes]], metadata: dict[str, str]) -> bytes:
    """The safetensors encoding: a little-endian u64 header length, the JSON
    header (padded to 8 bytes), then the tensors' bytes in order."""
    header, offset = {"__metadata__": metadata}, 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(d for _, _, d in tensors)


def from_sequential(model, input_shape: list[int]) -> Converted:
    """The task model and initial weights of `model`, an nn.Sequential whose
    input (without the batch dimension) has `input_shape`."""
    import numpy as np
    import torch
    from torch import nn

    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayer(f"the model is a {type(model).__name__}; give an nn.Sequential of its layers")
    layers, tensors = [], []
    for i, m in enumerate(model):
        spec, owned = _layer(i, m, nn)
        layers.append(spec)
        for suffix, t in owned:
            data = t.detach().to(torch.float32).cpu().numpy().astype("<f4", copy=False)
            if not np.isfinite(data).all():
                raise UnsupportedLayer(f"layer {i} ({type(m).__name__}): its {suffix} is not finite")
            tensors.append((f"layers.{i}.{suffix}", list(data.shape), data.tobytes()))
    if not layers:
        raise UnsupportedLayer("the Sequential has no layers")
    spec = {"version": SPEC_VERSION, "input": [int(d) for d in input_shape], "layers": layers}
    weights = safetensors_bytes(tensors, {SPEC_KEY: json.dumps(spec, separators=(",", ":"))})
    return Converted({"input": spec["input"], "layers": layers}, weights)


def read_safetensors(data: bytes) -> dict[str, tuple[list[int], bytes]]:
    """The F32 tensors of a safetensors file, by name: (shape, bytes)."""
    if len(data) < 8:
        raise ValueError("safetensors: shorter than its header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError("safetensors: the header runs past the end")
    header = json.loads(data[8:8 + n])
    body, out = data[8 + n:], {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        if t["dtype"] != "F32" or not 0 <= start <= end <= len(body):
            raise ValueError(f"safetensors: tensor {name} is not F32 within the file")
        out[name] = (t["shape"], body[start:end])
    return out


def load_into(model, weights: bytes) -> None:
    """Copies weights the node sent (a downloaded model's safetensors) into
    `model`, the nn.Sequential they were converted from."""
    import numpy as np
    import torch

    tensors = read_safetensors(weights)
    state = {}
    for name, param in model.state_dict().items():
        shape, data = tensors.get(f"layers.{name}", (None, None))
        if shape is None or list(param.shape) != shape:
            raise UnsupportedLayer(f"the weights have no tensor layers.{name} of shape {list(param.shape)}")
        state[name] = torch.from_numpy(np.frombuffer(data, dtype="<f4").reshape(shape).copy())
    model.load_state_dict(state)
