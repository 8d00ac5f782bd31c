"""The engineer's calls against a real node with a federated coordinator,
started by tests/node.rs, which also runs two devices that wait for the
task and sets YILIAN_FL_DATA (validation.csv and test.csv of the digits)."""

import csv
import os
import pathlib

import grpc
import pytest

import yilian

NODE = os.environ.get("YILIAN_NODE")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs a node: run tests/node.rs")


def data(name):
    return pathlib.Path(os.environ["YILIAN_FL_DATA"]) / name


def task(task_id):
    return {
        "id": task_id,
        "rounds": 2,
        "agents_per_round": 2,
        "min_agents": 2,
        "local_epochs": 3,
        "batch_size": 16,
        "validation": "validation.csv",
        "reward_budget": 1000,
        "round_timeout_ms": 120000,
        "optimizer": {"adam": {"lr": 0.05}},
        "model": {"input": [64], "layers": [{"linear": {"out": 10}}, "softmax"]},
        "schema": {"features": 64, "label_column": "y", "classes": 10},
    }


def rows(path):
    with open(path) as f:
        r = csv.reader(f)
        header = next(r)
        y = header.index("y")
        table = [[float(v) for v in row] for row in r]
    return [[v for i, v in enumerate(row) if i != y] for row in table], [int(row[y]) for row in table]


def engineer():
    eng = yilian.Identity(pathlib.Path(os.environ["YILIAN_IDENTITIES"]) / "eng")
    return eng.channel(NODE)


def torch_model():
    import torch
    from torch import nn

    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(64, 10), nn.Softmax(dim=1))


def test_an_engineer_submits_follows_downloads_and_runs_the_model():
    from yilian.pytorch import from_sequential, load_into

    net = torch_model()
    converted = from_sequential(net, [64])
    with engineer() as ch:
        eng = yilian.Engineer(ch)
        spec = {**task("py-digits"), "model": converted.model}
        submitted = eng.submit(spec, data("validation.csv"), initial_weights=converted.weights)
        assert submitted.task_id == "py-digits"
        assert submitted.params == 64 * 10 + 10
        assert submitted.ledger_index > 0

        events = list(eng.events("py-digits"))
        closed = [e for e in events if e.kind == "closed"]
        assert [e.round for e in closed] == [0, 1]
        assert events[-1].kind == "ended"
        assert events[-1].phase == "TASK_PHASE_FINISHED"

        status = eng.status("py-digits")
        assert [r.round for r in status.history] == [0, 1]
        assert status.history[-1].accuracy == pytest.approx(closed[-1].accuracy)

        model = yilian.Model(eng.download("py-digits", "onnx"))
        x, y = rows(data("test.csv"))
        predicted = model.predict(x)
        accuracy = sum(int(p) == t for p, t in zip(predicted, y)) / len(y)
        # Logistic regression on the digits after two federated rounds.
        assert accuracy > 0.8, accuracy
        probabilities = model.probabilities(x[:3])
        assert probabilities.shape == (3, 10)
        assert abs(float(probabilities.sum()) - 3.0) < 1e-4

        weights = eng.download("py-digits", "safetensors")
        assert weights[8:9] == b"{", "a safetensors header"
        # The trained weights back in the PyTorch model: torch's forward pass
        # and the node's ONNX export agree on them.
        import numpy as np
        import torch

        load_into(net, weights)
        with torch.no_grad():
            ours = net(torch.tensor(x[:50], dtype=torch.float32)).numpy()
        assert np.allclose(ours, model.probabilities(x[:50]), atol=1e-5)


def test_a_pytorch_model_starts_a_task_from_its_own_weights():
    """The devices have left (each took one task), so this task waits at
    round 0 and its global model is the one PyTorch gave."""
    from torch import nn

    from safetensors.numpy import load
    from yilian.pytorch import UnsupportedLayer, from_sequential

    net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 10), nn.Softmax(dim=1))
    converted = from_sequential(net, [64])
    assert converted.model == {
        "input": [64],
        "layers": [{"linear": {"out": 16}}, "relu", {"dropout": {"p": 0.1}}, {"linear": {"out": 10}}, "softmax"],
    }
    with engineer() as ch:
        eng = yilian.Engineer(ch)
        eng.submit({**task("py-torch-init"), "model": converted.model}, data("validation.csv"),
                   initial_weights=converted.weights)
        served = load(eng.download("py-torch-init", "safetensors"))
    for name, param in net.state_dict().items():
        tensor = served[f"layers.{name}"]
        assert list(tensor.shape) == list(param.shape)
        assert tensor.astype("<f4").tobytes() == param.detach().numpy().astype("<f4").tobytes(), name
    for bad, why in [
        (nn.Sequential(nn.Linear(64, 10), nn.Tanh()), r"layer 1 \(Tanh\) is not one the node trains"),
        (nn.Sequential(nn.Linear(64, 10, bias=False)), r"layer 0 \(Linear\): bias=False"),
        (nn.Sequential(nn.Conv2d(1, 4, 3, stride=2)), r"layer 0 \(Conv2d\): the node convolves with stride 1"),
        (nn.Sequential(nn.MaxPool2d(2, stride=1)), r"layer 0 \(MaxPool2d\)"),
        (nn.Linear(64, 10), "give an nn.Sequential"),
    ]:
        with pytest.raises(UnsupportedLayer, match=why):
            from_sequential(bad, [1, 8, 8])


def test_a_cnn_converts_layer_by_layer():
    from torch import nn

    from safetensors.numpy import load
    from yilian.pytorch import from_sequential

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1),
    )
    converted = from_sequential(net, [1, 8, 8])
    assert converted.model["layers"][:4] == [
        {"conv2d": {"out_channels": 4, "kernel": 3, "padding": 1}}, "relu", {"max_pool": {"size": 2}}, "flatten",
    ]
    tensors = load(converted.weights)
    assert {k: list(v.shape) for k, v in tensors.items()} == {
        "layers.0.weight": [4, 1, 3, 3], "layers.0.bias": [4], "layers.4.weight": [10, 64], "layers.4.bias": [10],
    }


def test_a_task_file_on_disk_and_a_refused_submission(tmp_path):
    with engineer() as ch:
        eng = yilian.Engineer(ch)
        # The same id again: refused, naming what to change.
        with pytest.raises(grpc.RpcError) as again:
            eng.submit(task("py-digits"), data("validation.csv"))
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "give the task file another `id`" in again.value.details()
        # A task file on disk with a field the node does not know.
        import tomli_w

        bad = tmp_path / "task.toml"
        bad.write_text(tomli_w.dumps({**task("py-other"), "unknown_field": 1}))
        with pytest.raises(grpc.RpcError) as refused:
            eng.submit(bad, data("validation.csv"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown field `unknown_field`" in refused.value.details()
        with pytest.raises(grpc.RpcError) as unknown:
            eng.status("py-other")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, "nothing was stored"
        with pytest.raises(ValueError, match="fmt"):
            eng.download("py-digits", "pickle")
        # A format number the node does not know is refused, not read as safetensors.
        from yilian._pb import federated_pb2 as pb

        with pytest.raises(grpc.RpcError) as bad_format:
            list(eng._stub.Download(pb.DownloadRequest(task_id="py-digits", format=7)))
        assert bad_format.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "format 7 is not a model format" in bad_format.value.details()
