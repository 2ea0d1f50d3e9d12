"""Regenerates the committed Python code of the v1 API from protos/.

Usage: python scripts/gen_protos.py [--check]

With --check, generates into a temporary folder and exits 1 when the committed
code differs (the test suite runs this, so stale generated code fails CI).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "src"
PACKAGE = Path("desiderata") / "v1"
INIT = '"""Generated code of the desiderata v1 API (scripts/gen_protos.py). Do not edit."""\n'


def generate(out: Path) -> None:
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    venv_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / PACKAGE / "__init__.py").write_text(INIT)
    (out / PACKAGE / "py.typed").write_text("")


def main() -> int:
    if "--check" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            fresh, committed = Path(tmp) / PACKAGE, OUT / PACKAGE
            cmp = filecmp.dircmp(fresh, committed)
            stale = cmp.diff_files + cmp.left_only + cmp.right_only
            if stale:
                print(f"generated code is stale: {sorted(stale)}; run python scripts/gen_protos.py")
                return 1
            print("generated code is fresh")
            return 0
    target = OUT / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    generate(OUT)
    print(f"generated into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
