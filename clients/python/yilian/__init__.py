"""Python client for a Yilian network.

- `Identity`: an identity directory, for mutual TLS and ledger signatures;
- `Auditor`: tree heads, inclusion and consistency proofs, checked in pure Python;
- `KeyOwner`: KMS keys and data keys, and envelopes sealed and opened locally.

The gRPC stubs are generated from the repository's `proto/` (`yilian._stubs`).
"""

from . import _stubs

_stubs.ensure()

from .envelope import Envelope, EnvelopeError  # noqa: E402
from .identity import Identity, IdentityError, Principal  # noqa: E402
from .kms import DataKey, KeyOwner  # noqa: E402
from .ledger import Auditor, Head, HeadError  # noqa: E402
from .merkle import ProofError  # noqa: E402

__all__ = [
    "Auditor", "DataKey", "Envelope", "EnvelopeError", "Head", "HeadError",
    "Identity", "IdentityError", "KeyOwner", "Principal", "ProofError",
]
