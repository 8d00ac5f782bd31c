"""`pip wheel` builds the package with stubs generated from proto/ at build time."""

import pathlib
import subprocess
import sys
import zipfile

HERE = pathlib.Path(__file__).resolve().parent.parent


def test_the_wheel_carries_stubs_generated_while_building(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
         "-w", str(tmp_path), str(HERE)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("yilian-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for proto in ("ledger", "kms", "zk", "federated", "consortium"):
        assert f"yilian/_pb/{proto}_pb2.py" in names, sorted(names)
        assert f"yilian/_pb/{proto}_pb2_grpc.py" in names, sorted(names)
    assert "yilian/merkle.py" in names
