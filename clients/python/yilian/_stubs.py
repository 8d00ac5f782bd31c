"""Generates the gRPC stubs from the repository's `proto/` with grpcio-tools.

No generated message is committed: `pip install` runs this from setup.py,
and in a checkout `python -m yilian._stubs` writes them into `yilian/_pb/`.
"""

import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent
PROTO = PACKAGE.parent.parent.parent / "proto"


def generate(out: pathlib.Path = PACKAGE.parent, proto: pathlib.Path = PROTO) -> None:
    """Writes `yilian/_pb/*_pb2.py` and `*_pb2_grpc.py` under `out`."""
    from grpc_tools import protoc

    files = sorted(proto.glob("*.proto"))
    if not files:
        sys.exit(f"no .proto files in {proto}; run from a Yilian checkout")
    target = out / "yilian" / "_pb"
    target.mkdir(parents=True, exist_ok=True)
    (target / "__init__.py").write_text('"""Generated from proto/ by yilian._stubs."""\n')
    # Mapping the include path makes the generated modules import each
    # other as `yilian._pb.x_pb2`, not as top-level modules.
    args = [
        "grpc_tools.protoc",
        f"-Iyilian/_pb={proto}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        # Each file is named through the mapped path.
        *(f"yilian/_pb/{f.name}" for f in files),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"grpc_tools.protoc failed on {proto}")


def ensure() -> None:
    """Generates the stubs in a checkout when any .proto is newer than them."""
    marker = PACKAGE / "_pb" / "ledger_pb2.py"
    newest = max((p.stat().st_mtime for p in PROTO.glob("*.proto")), default=0)
    if not marker.exists() or marker.stat().st_mtime < newest:
        generate()


if __name__ == "__main__":
    generate()
