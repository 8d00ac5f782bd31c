"""Python client for a Yilian network.

- `Identity`: an identity directory, for mutual TLS and ledger signatures;
- `Auditor`: tree heads (the members' cosigned C2SP checkpoints, `yilian.checkpoint`),
  inclusion and consistency proofs, checked in pure Python;
- `KeyOwner`: KMS keys and data keys, and envelopes sealed and opened locally;
- `Bank`: consented ZK questions, each answer's Groth16 proof, anchors and
  question checked in Python (`yilian.groth16`);
- `Engineer`: federated tasks submitted, followed and downloaded; `Model` runs
  a downloaded ONNX model with onnxruntime; `yilian.pytorch` converts an
  nn.Sequential into a task model and its initial weights.

The gRPC stubs are generated from the repository's `proto/` (`yilian._stubs`).
"""

from . import _stubs

_stubs.ensure()

from .checkpoint import Checkpoint, CheckpointError, Cosigner  # noqa: E402
from .engineer import Engineer, Event, Model, Submitted, TaskError  # noqa: E402
from .envelope import Envelope, EnvelopeError  # noqa: E402
from .identity import Identity, IdentityError, Principal  # noqa: E402
from .kms import DataKey, KeyOwner  # noqa: E402
from .ledger import Auditor, Head, HeadError  # noqa: E402
from .merkle import ProofError  # noqa: E402
from .zk import Answer, Bank, Predicate, ZkCheckError  # noqa: E402

__all__ = [
    "Answer", "Auditor", "Bank", "Checkpoint", "CheckpointError", "Cosigner", "DataKey", "Engineer", "Envelope", "EnvelopeError", "Event", "Head",
    "HeadError", "Identity", "IdentityError", "KeyOwner", "Model", "Principal",
    "Predicate", "ProofError", "Submitted", "TaskError", "ZkCheckError",
]
