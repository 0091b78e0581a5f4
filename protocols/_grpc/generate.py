"""Regenerate the scoring gRPC stubs: ``python -m protocols._grpc.generate``.

The generated modules are committed (no build step at install time); this rewrites them from
``protocols/scoring.proto`` and makes their imports package-relative.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent
PROTO = "scoring.proto"


def generate() -> list[Path]:
    from grpc_tools import protoc

    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={HERE}", f"--grpc_python_out={HERE}", PROTO]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    grpc_file = HERE / "scoring_pb2_grpc.py"
    text = re.sub(r"^import scoring_pb2 as", "from . import scoring_pb2 as", grpc_file.read_text(), flags=re.M)
    grpc_file.write_text(text)
    return [HERE / "scoring_pb2.py", grpc_file]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(PROTO_DIR.parent))
    sys.exit(0)
