"""PyTorch models as federated tasks: an `nn.Sequential` of the layers the
node trains becomes a task's `[model]` table and its initial weights, as
safetensors named as the node names them (`layers.{i}.weight`, `.bias`:
nn.Sequential's own state_dict names, prefixed). A layer the node cannot
train is refused by its index and name, with what to use instead.

    from yilian.pytorch import from_sequential
    converted = from_sequential(net, input_shape=[64])
    task = {..., "model": converted.model}
    engineer.submit(task, validation, initial_weights=converted.weights)

torch and safetensors (the format's reference implementation) are needed
only here (`pip install './clients/python[torch]'`); the rest of the SDK
runs without them.
"""

import json
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


def from_sequential(model, input_shape: list[int]) -> Converted:
    """The task model and initial weights of `model`, an nn.Sequential whose
    input (without the batch dimension) has `input_shape`."""
    import numpy as np
    import torch
    from safetensors.numpy import save
    from torch import nn

    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayer(f"the model is a {type(model).__name__}; give an nn.Sequential of its layers")
    layers, tensors = [], {}
    for i, m in enumerate(model):
        spec, owned = _layer(i, m, nn)
        layers.append(spec)
        for suffix, t in owned:
            data = t.detach().to(torch.float32).cpu().numpy()
            if not np.isfinite(data).all():
                raise UnsupportedLayer(f"layer {i} ({type(m).__name__}): its {suffix} is not finite")
            tensors[f"layers.{i}.{suffix}"] = data
    if not layers:
        raise UnsupportedLayer("the Sequential has no layers")
    spec = {"version": SPEC_VERSION, "input": [int(d) for d in input_shape], "layers": layers}
    weights = save(tensors, metadata={SPEC_KEY: json.dumps(spec, separators=(",", ":"))})
    return Converted({"input": spec["input"], "layers": layers}, weights)


def load_into(model, weights: bytes) -> None:
    """Copies weights the node sent (a downloaded model's safetensors) into
    `model`, the nn.Sequential they were converted from."""
    import torch
    from safetensors.numpy import load

    tensors = load(weights)
    state = {}
    for name, param in model.state_dict().items():
        t = tensors.get(f"layers.{name}")
        if t is None or t.shape != tuple(param.shape):
            raise UnsupportedLayer(f"the weights have no tensor layers.{name} of shape {list(param.shape)}")
        state[name] = torch.from_numpy(t.copy())
    model.load_state_dict(state)
