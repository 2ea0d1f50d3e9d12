"""Regenerates the committed Python code of the v1 API and of the Open
Inference Protocol from protos/.

Usage: python scripts/gen_protos.py [--check]

    protos/desiderata/v1/*.proto            → desiderata.v1
    protos/inference/grpc_predict_v2.proto  → desiderata.oip (proto package
        `inference`, as published; generated under our namespace so that no
        bare `inference` package lands in site-packages; the wire names, e.g.
        inference.GRPCInferenceService, are unchanged)

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
OIP_PACKAGE = Path("desiderata") / "oip"
OIP_PROTO = Path("inference") / "grpc_predict_v2.proto"
PACKAGES = (PACKAGE, OIP_PACKAGE)
INITS = {
    PACKAGE: '"""Generated code of the desiderata v1 API (scripts/gen_protos.py). Do not edit."""\n',
    OIP_PACKAGE: '"""Generated code of the Open Inference Protocol (KServe V2) from protos/inference '
    '(scripts/gen_protos.py). Do not edit."""\n',
}


def _protoc(out: Path, root: Path, files: list[str]) -> None:
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{root}",
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


def generate(out: Path) -> None:
    _protoc(out, PROTOS, sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto")))
    with tempfile.TemporaryDirectory() as staging:  # the OIP proto, placed at desiderata/oip/
        target = Path(staging) / OIP_PACKAGE / OIP_PROTO.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(PROTOS / OIP_PROTO, target)
        _protoc(out, Path(staging), [str(OIP_PACKAGE / OIP_PROTO.name)])
    for package in PACKAGES:
        (out / package / "__init__.py").write_text(INITS[package])
        (out / package / "py.typed").write_text("")


def main() -> int:
    if "--check" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale: list[str] = []
            for package in PACKAGES:
                fresh, committed = Path(tmp) / package, OUT / package
                if not committed.is_dir():
                    stale.append(str(package))
                    continue
                cmp = filecmp.dircmp(fresh, committed)
                stale += [str(package / n) for n in cmp.diff_files + cmp.left_only + cmp.right_only]
            if stale:
                print(f"generated code is stale: {sorted(stale)}; run python scripts/gen_protos.py")
                return 1
            print("generated code is fresh")
            return 0
    for package in PACKAGES:
        shutil.rmtree(OUT / package, ignore_errors=True)
        (OUT / package).mkdir(parents=True)
    generate(OUT)
    print(f"generated into {', '.join(str(OUT / p) for p in PACKAGES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
