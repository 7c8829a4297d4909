"""Generates the Python bindings of protos/NAME.proto beside it, importing each other through the package.

protoc names imports after the path it was given: generated from protos/NAME.proto, the gRPC stubs would say
`from protos import NAME_pb2`, a top-level `protos` the installed wheel does not have. So the .proto is copied
to predserve/protos/ in a scratch tree, generated there (`from predserve.protos import NAME_pb2`), and the
outputs are moved back. Used by the Makefile and the Containerfile alike.

    python scripts/generate_protos.py protos/predserve.proto [protos/grpc_predict_v2.proto ...]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc


def generate(proto: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="predserve-protoc-") as scratch:
        package_dir = Path(scratch) / "predserve" / "protos"
        package_dir.mkdir(parents=True)
        shutil.copy(proto, package_dir / proto.name)
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        arguments = [
            "protoc",
            f"-I{scratch}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            str(package_dir / proto.name),
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit(f"protoc failed on {proto}")
        for output in package_dir.glob(f"{proto.stem}_pb2*"):
            shutil.move(str(output), proto.parent / output.name)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        generate(Path(name))
