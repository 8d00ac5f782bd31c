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


def test_an_engineer_submits_follows_downloads_and_runs_the_model():
    with engineer() as ch:
        eng = yilian.Engineer(ch)
        submitted = eng.submit(task("py-digits"), data("validation.csv"))
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
