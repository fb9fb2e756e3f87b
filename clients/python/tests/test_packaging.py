"""The package as a user gets it: a wheel with py.typed and one dependency, installed into a
fresh venv (offline: the wheel built here, urllib3's from dev-venv.sh's DIR/wheels)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List

import pytest
from support import PACKAGE_ROOT


def run(args: List[str], **kwargs: object) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(PACKAGE_ROOT),
        ]
    )
    (built,) = out.glob("keygate-*.whl")
    return built


def test_wheel_is_typed_and_needs_only_urllib3(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {
        "keygate/__init__.py",
        "keygate/client.py",
        "keygate/drf.py",
        "keygate/fastapi.py",
        "keygate/py.typed",
    } <= names
    assert not any(n.startswith("tests/") for n in names)
    requires = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert [r for r in requires if "extra ==" not in r] == ["urllib3<3,>=1.26"]
    extras = {
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")
    }
    assert extras == {"drf", "fastapi"}


def test_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    wheels = Path(sys.prefix) / "wheels"
    assert list(wheels.glob("urllib3-*.whl")), f"no urllib3 wheel in {wheels}: run dev-venv.sh"
    venv = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), str(wheel)])
    # the base package imports without Django or FastAPI; the integrations say what they need
    probe = (
        "import keygate, sys\n"
        "assert keygate.Client and keygate.VerifyResult and keygate.KeyInfo\n"
        "assert 'django' not in sys.modules and 'fastapi' not in sys.modules\n"
        "for extra in ('drf', 'fastapi'):\n"
        "    try:\n"
        "        __import__('keygate.' + extra)\n"
        "    except ImportError as e:\n"
        "        print(extra, e.name)\n"
    )
    assert run([python, "-c", probe]).stdout.split("\n")[:2] == ["drf django", "fastapi fastapi"]
    installed = run([python, "-m", "pip", "list", "--format", "freeze"]).stdout.split()
    assert sorted(
        p.split("==")[0].lower() for p in installed if not p.lower().startswith(("pip==", "setuptools=="))
    ) == [
        "keygate",
        "urllib3",
    ]
