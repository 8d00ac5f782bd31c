"""An identity directory as `yilian admin admit` writes it (docs/identity.md)."""

import pathlib
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

#: The certificate extension that carries the ed25519 ledger key.
LEDGER_KEY_OID = x509.ObjectIdentifier("2.25.6125913829687986273")
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class IdentityError(ValueError):
    """An identity directory that cannot be used, naming the file."""


@dataclass(frozen=True)
class Principal:
    org: str
    role: str
    name: str
    #: The ed25519 ledger key the certificate carries: the ledger account.
    account: bytes


class Identity:
    """cert.pem, key.pem (TLS, ECDSA P-256), ledger-key.pem (ed25519) and ca.pem."""

    def __init__(self, directory: str | pathlib.Path):
        d = pathlib.Path(directory)
        self.directory = d
        files = {}
        for name in ("cert.pem", "key.pem", "ledger-key.pem", "ca.pem"):
            try:
                files[name] = (d / name).read_bytes()
            except OSError as e:
                raise IdentityError(f"{d / name}: {e.strerror}; is {d} an identity directory?") from e
        self._cert, self._tls_key, self._ca = files["cert.pem"], files["key.pem"], files["ca.pem"]
        cert = x509.load_pem_x509_certificate(self._cert)
        try:
            ext = cert.extensions.get_extension_for_oid(LEDGER_KEY_OID).value.value
        except x509.ExtensionNotFound as e:
            raise IdentityError(
                f"{d / 'cert.pem'}: no ledger key extension ({LEDGER_KEY_OID.dotted_string}); "
                "issue the identity again with `yilian admin admit`"
            ) from e
        if len(ext) != 44 or not ext.startswith(_SPKI_PREFIX):
            raise IdentityError(f"{d / 'cert.pem'}: the ledger key extension is not an ed25519 key")
        account = ext[12:]
        key = serialization.load_pem_private_key(files["ledger-key.pem"], password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{d / 'ledger-key.pem'}: not an ed25519 key")
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if public != account:
            raise IdentityError(f"{d / 'ledger-key.pem'}: not the key cert.pem carries")
        self._ledger_key = key

        def one(oid):
            attrs = cert.subject.get_attributes_for_oid(oid)
            if len(attrs) != 1:
                raise IdentityError(f"{d / 'cert.pem'}: the subject needs exactly one {oid._name}")
            return attrs[0].value

        self.principal = Principal(
            org=one(NameOID.ORGANIZATION_NAME),
            role=one(NameOID.ORGANIZATIONAL_UNIT_NAME),
            name=one(NameOID.COMMON_NAME),
            account=account,
        )

    def __repr__(self) -> str:
        p = self.principal
        return f"Identity({p.org}/{p.name} ({p.role}))"

    def sign(self, message: bytes) -> bytes:
        """An ed25519 signature by the ledger key."""
        return self._ledger_key.sign(message)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self._ca, private_key=self._tls_key, certificate_chain=self._cert
        )

    def channel(self, target: str) -> grpc.Channel:
        """A mutual-TLS channel to a node, e.g. `127.0.0.1:7400`."""
        return grpc.secure_channel(target, self.credentials())
