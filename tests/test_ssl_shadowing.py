"""The source root is named ssl/ but must never shadow Python's standard ssl module."""

import subprocess
import sys
import sysconfig

from conftest import ROOT


def test_repo_root_first_on_path_keeps_stdlib_ssl_and_lightning_imports():
    code = (
        "import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, '');"
        "import ssl, lightning;"
        "print(ssl.__file__); print(hasattr(ssl, 'SSLWantReadError'))"
    ).format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ssl_file, has_attr = out.stdout.split()[-2:]
    assert ssl_file.startswith(sysconfig.get_paths()["stdlib"]), ssl_file
    assert has_attr == "True"


def test_source_root_is_not_a_package():
    assert not (ROOT / "ssl" / "__init__.py").exists()
    assert (ROOT / "ssl" / "selfsup" / "__init__.py").exists()
