"""Exit 0 when the local gRPC server reports SERVING over TLS, else 1.

The chart runs this as an exec probe while gRPC TLS is on, because the
kubelet's native gRPC probe connects in plaintext only. It uses the grpcio
and grpcio-health-checking packages of the image's venv.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument(
        "--server-name",
        required=True,
        help="DNS name the server certificate must match",
    )
    parser.add_argument(
        "--ca-file", required=True, help="PEM CA bundle that signed the certificate"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to connect to")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds the check may take"
    )
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> bool:
    """Return whether the server's overall health status is SERVING."""
    with open(args.ca_file, "rb") as ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read())
    options = [("grpc.ssl_target_name_override", args.server_name)]
    target = f"{args.host}:{args.port}"
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(
                f"health check of {target} failed: {exc.code().name}", file=sys.stderr
            )
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{target} reports {status}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(0 if check(parse_args(sys.argv[1:])) else 1)
