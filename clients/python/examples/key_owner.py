"""A key owner encrypts a file locally under a KMS data key.

    python examples/key_owner.py 127.0.0.1:7400 net/identities/holder vault FILE

Creates the master key VAULT if needed, asks for a data key, seals FILE into
FILE.env locally (the KMS never sees it), stores the wrapped data key in
FILE.key, then unwraps it again and opens FILE.env to show it round-trips.
"""

import pathlib
import sys

import grpc

import yilian

target, directory, key_id, path = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
me = yilian.Identity(directory)
context = path.name.encode()
with me.channel(target) as channel:
    owner = yilian.KeyOwner(channel, me.principal.account)
    try:
        owner.create_key(key_id)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    data_key = owner.generate_data_key(key_id, context)
    sealed = owner.seal(data_key, path.read_bytes(), context)
    data_key.wipe()
    path.with_suffix(path.suffix + ".env").write_bytes(sealed.encode())
    path.with_suffix(path.suffix + ".key").write_bytes(data_key.wrapped.encode())
    key = owner.unwrap(data_key.wrapped, context)
    assert owner.open(key, sealed, context) == path.read_bytes()
    print(f"sealed {path} under {key_id} v{data_key.key_version}; unwrapped and opened again")
