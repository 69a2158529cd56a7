"""The library never imports kfp: only polydistill_kfp (src/polydistill_kfp/: the DAG and its components) and the
pipeline CLI commands (lazily) do."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import polydistill


def test_library_modules_do_not_import_kfp() -> None:
    mods = [
        m.name for m in pkgutil.walk_packages(polydistill.__path__, "polydistill.") if not m.name.endswith("__main__")
    ]
    assert "polydistill.teacher" in mods and "polydistill.cli.pipeline" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'polydistill_kfp'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"library modules pulled in: {out.stdout.strip()}"
