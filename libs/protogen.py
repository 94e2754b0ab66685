"""Generate the Python gRPC code from protos/ into the alerthistory package.

The generated package is never edited by hand: the build (setup.py) and
`python -m libs.protogen` write it anew from the .proto files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUTPUT_PACKAGE = "alerthistory"


def generate(root: Path = ROOT) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto file."""
    from grpc_tools import protoc  # imported late: only the build needs it

    proto_dir = root / "protos"
    output = root / OUTPUT_PACKAGE
    protos = sorted(proto_dir.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_dir}")

    if output.exists():
        shutil.rmtree(output)
    output.mkdir()

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *(str(p.relative_to(proto_dir)) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")

    for directory in [output, *(p for p in output.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return protos


if __name__ == "__main__":
    generated = generate()
    print(f"generated Python code for {len(generated)} proto files", file=sys.stderr)
