"""The key owner's view of the KMS: keys, data keys, and envelopes opened locally."""

from dataclasses import dataclass, field

from . import envelope
from ._pb import kms_pb2, kms_pb2_grpc


@dataclass
class DataKey:
    """A data key: `plaintext` to encrypt locally, `wrapped` to store beside the data."""

    plaintext: bytearray = field(repr=False)
    wrapped: envelope.Envelope
    key_version: int

    def wipe(self) -> None:
        for i in range(len(self.plaintext)):
            self.plaintext[i] = 0


class KeyOwner:
    def __init__(self, channel, account: bytes):
        self._stub = kms_pb2_grpc.KmsStub(channel)
        #: The owner's ledger key, bound into every envelope's associated data.
        self.account = account

    def create_key(self, key_id: str) -> int:
        """Creates an AES-256-GCM master key; returns its version."""
        return self._stub.CreateKey(kms_pb2.CreateKeyRequest(key_id=key_id)).latest_version

    def generate_data_key(self, key_id: str, context: bytes = b"") -> DataKey:
        r = self._stub.GenerateDataKey(kms_pb2.GenerateDataKeyRequest(key_id=key_id, context=context))
        return DataKey(bytearray(r.plaintext), envelope.Envelope.decode(r.wrapped), r.key_version)

    def unwrap(self, wrapped: envelope.Envelope, context: bytes = b"") -> bytearray:
        """The data key inside `wrapped`, from the KMS (audited on the ledger)."""
        r = self._stub.Decrypt(kms_pb2.DecryptRequest(envelope=wrapped.encode(), context=context))
        return bytearray(r.plaintext)

    def seal(self, data_key: DataKey, plaintext: bytes, context: bytes = b"") -> envelope.Envelope:
        """Encrypts locally under the data key; the KMS never sees `plaintext`."""
        return envelope.seal(
            bytes(data_key.plaintext), data_key.wrapped.key_id, data_key.key_version,
            self.account, context, plaintext,
        )

    def open(self, key: bytes | bytearray, env: envelope.Envelope, context: bytes = b"") -> bytes:
        return env.open(bytes(key), self.account, context)
