"""Python client for a Yilian network.

- `Identity`: an identity directory, for mutual TLS and ledger signatures;
- `Auditor`: tree heads, inclusion and consistency proofs, checked in pure Python;
- `KeyOwner`: KMS keys and data keys, and envelopes sealed and opened locally;
- `Engineer`: federated tasks submitted, followed and downloaded; `Model` runs
  a downloaded ONNX model with onnxruntime.

The gRPC stubs are generated from the repository's `proto/` (`yilian._stubs`).
"""

from . import _stubs

_stubs.ensure()

from .engineer import Engineer, Event, Model, Submitted, TaskError  # noqa: E402
from .envelope import Envelope, EnvelopeError  # noqa: E402
from .identity import Identity, IdentityError, Principal  # noqa: E402
from .kms import DataKey, KeyOwner  # noqa: E402
from .ledger import Auditor, Head, HeadError  # noqa: E402
from .merkle import ProofError  # noqa: E402

__all__ = [
    "Auditor", "DataKey", "Engineer", "Envelope", "EnvelopeError", "Event", "Head",
    "HeadError", "Identity", "IdentityError", "KeyOwner", "Model", "Principal",
    "ProofError", "Submitted", "TaskError",
]
