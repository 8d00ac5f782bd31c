"""Connects to a Yilian node with gRPC's C core (grpcio), as a bank's or an
engineer's Python client would: mutual TLS from an identity directory as
`yilian admin admit` writes it, then the standard health check, the service
list through server reflection, and one Yilian call.

    python connect.py HOST:PORT IDENTITY_DIR

Prints one JSON object; exits 1 with the gRPC error if a step fails.
"""

import json
import pathlib
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main(target: str, identity: pathlib.Path) -> dict:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(identity / "ca.pem").read_bytes(),
        private_key=(identity / "key.pem").read_bytes(),
        certificate_chain=(identity / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        ledger = health.Check(
            health_pb2.HealthCheckRequest(service="yilian.ledger.v1.Ledger"), timeout=10
        )

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = sorted(s.name for r in replies for s in r.list_services_response.service)

        # No generated stubs: the request is an empty message, the reply's
        # bytes are whatever the node's tree head encodes to.
        tree_head = channel.unary_unary(
            "/yilian.ledger.v1.Ledger/GetTreeHead",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )(None, timeout=10)

    return {
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(overall.status),
        "ledger_health": health_pb2.HealthCheckResponse.ServingStatus.Name(ledger.status),
        "services": services,
        "tree_head_bytes": len(tree_head),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        print(json.dumps(main(sys.argv[1], pathlib.Path(sys.argv[2]))))
    except grpc.RpcError as e:
        sys.exit(f"{e.code()}: {e.details()}")
