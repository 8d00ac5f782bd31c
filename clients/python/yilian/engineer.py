"""The ML engineer's view of federated learning: submit a task, follow its
rounds, download the model, and run it with onnxruntime."""

import hashlib
import pathlib
from dataclasses import dataclass

from ._pb import federated_pb2 as pb
from ._pb import federated_pb2_grpc

#: Bytes per upload chunk; the node takes messages of up to 4 MiB.
CHUNK = 256 * 1024


class TaskError(Exception):
    """A download that does not match what the node announced."""


def _task_toml(task) -> str:
    if isinstance(task, dict):
        import tomli_w

        return tomli_w.dumps(task)
    if isinstance(task, pathlib.Path):
        return task.read_text()
    text = str(task)
    # A one-line string naming an existing file is a path; a task file has many lines.
    if "\n" not in text and pathlib.Path(text).is_file():
        return pathlib.Path(text).read_text()
    return text


def _bytes(source) -> bytes:
    if source is None:
        return b""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    return pathlib.Path(source).read_bytes()


@dataclass
class Submitted:
    task_id: str
    params: int
    #: Where the task's anchor sits on the ledger.
    ledger_index: int


@dataclass
class Event:
    """One event of a task: `kind` is "started", "closed" or "ended"."""

    kind: str
    round: int | None = None
    accuracy: float | None = None
    loss: float | None = None
    epsilon: float | None = None
    #: For "ended": the phase name (e.g. "TASK_PHASE_FINISHED") and rounds closed.
    phase: str | None = None
    rounds_closed: int | None = None


class Engineer:
    def __init__(self, channel):
        self._stub = federated_pb2_grpc.FederatedStub(channel)

    def submit(self, task, validation, initial_weights=None) -> Submitted:
        """Submits a training task: `task` is a TOML file's path, its text, or a
        dict of the same fields; `validation` the validation CSV (path or bytes);
        `initial_weights` optional safetensors. The node checks the whole task
        and anchors it on the ledger before it stores anything."""
        toml_text, csv, weights = _task_toml(task), _bytes(validation), _bytes(initial_weights)

        def parts():
            yield pb.SubmitTaskRequest(header=pb.TaskHeader(
                task_toml=toml_text, validation_bytes=len(csv), weights_bytes=len(weights)))
            for i in range(0, len(csv), CHUNK):
                yield pb.SubmitTaskRequest(validation_chunk=csv[i:i + CHUNK])
            for i in range(0, len(weights), CHUNK):
                yield pb.SubmitTaskRequest(weights_chunk=weights[i:i + CHUNK])

        r = self._stub.SubmitTask(parts())
        return Submitted(r.task_id, r.params, r.ledger_index)

    def status(self, task_id: str) -> pb.TrainingStatus:
        """The task's phase and every closed round (all pages)."""
        status, start = None, 0
        while True:
            r = self._stub.TaskStatus(pb.TaskStatusRequest(task_id=task_id, from_round=start))
            page = r.training
            if status is None:
                status = page
            else:
                status.history.extend(page.history)
            if not page.HasField("next_round"):
                return status
            start = page.next_round

    def events(self, task_id: str):
        """Yields the task's events as they happen, rounds already closed
        first, and ends after the task's end."""
        for e in self._stub.WatchTask(pb.WatchTaskRequest(task_id=task_id)):
            which = e.WhichOneof("event")
            if which == "started":
                yield Event("started", round=e.started.round)
            elif which == "closed":
                c = e.closed
                yield Event("closed", round=c.round, accuracy=c.accuracy, loss=c.loss,
                            epsilon=c.epsilon if c.HasField("epsilon") else None)
            elif which == "ended":
                yield Event("ended", phase=pb.TaskPhase.Name(e.ended.phase),
                            rounds_closed=e.ended.rounds_closed)
                return

    def download(self, task_id: str, fmt: str = "onnx") -> bytes:
        """The task's current model ("onnx" or "safetensors"), checked against
        the size and SHA-256 the node announced."""
        formats = {"onnx": pb.MODEL_FORMAT_ONNX, "safetensors": pb.MODEL_FORMAT_SAFETENSORS}
        if fmt not in formats:
            raise ValueError(f"fmt {fmt!r}: use one of {sorted(formats)}")
        data, total, digest = bytearray(), None, None
        for chunk in self._stub.Download(pb.DownloadRequest(task_id=task_id, format=formats[fmt])):
            if total is None:
                total, digest = chunk.total_bytes, bytes(chunk.sha256)
            data += chunk.data
        if total is None or len(data) != total:
            raise TaskError(f"download of {task_id}: {len(data)} bytes arrived, {total} announced")
        if hashlib.sha256(data).digest() != digest:
            raise TaskError(f"download of {task_id}: the SHA-256 does not match the node's")
        return bytes(data)


class Model:
    """An exported ONNX model, run locally with onnxruntime."""

    def __init__(self, onnx: bytes):
        import onnxruntime

        self._session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def probabilities(self, rows):
        """Class probabilities for `rows` (a sequence of feature rows)."""
        import numpy

        x = numpy.asarray(rows, dtype=numpy.float32)
        return self._session.run(None, {self._input: x})[0]

    def predict(self, rows):
        return self.probabilities(rows).argmax(axis=1)
