"""The installed layout: the stage folders live under ``ultrafeedback.*`` (no top-level ``tasks``,
``infra``, ``flows`` or ``expectations`` package), and the demo spec with its sources is package
data, so the demo runs from a non-editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("ultrafeedback_builder-*.whl")
    return wheel


def test_the_wheel_installs_everything_under_the_project_name(tmp_path):
    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"ultrafeedback", "ultrafeedback_builder-0.1.0.dist-info"}
    for path in (
        "ultrafeedback/tasks/stages.py",
        "ultrafeedback/flows/build.py",
        "ultrafeedback/infra/store.py",
        "ultrafeedback/expectations/stages/generate.py",
        "ultrafeedback/tasks/annotate/templates/helpfulness.txt",
        "ultrafeedback/tasks/assign/principles.yaml",
        "ultrafeedback/deployments/specs/demo.yaml",
        "ultrafeedback/deployments/data/demo_instructions.jsonl",
        "ultrafeedback/deployments/data/sample_truthfulqa.csv",
        "ultrafeedback/deployments/specs/ultrafeedback.yaml",
        "ultrafeedback/deployments/chat_templates/llama-2-chat.json",
    ):
        assert path in names, path


def test_the_demo_spec_validates_from_an_unpacked_install(tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(build_wheel(tmp_path)).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install
    code = (
        "import importlib.util, sys\n"
        "from ultrafeedback.cli import demo_spec, main\n"
        "import ultrafeedback.tasks.stages as stages\n"
        f"assert stages.__file__.startswith({str(site)!r}), stages.__file__\n"
        f"assert str(demo_spec()).startswith({str(site)!r}), demo_spec()\n"
        "assert all(importlib.util.find_spec(n) is None for n in ('tasks', 'infra', 'flows', 'expectations'))\n"
        "from ultrafeedback.spec import load_spec\n"
        "from ultrafeedback.tasks.ingest.loaders import resolve_files\n"
        "spec = load_spec(str(demo_spec()), [])\n"
        "for source in spec.sources:  # the sample sources were shipped beside the spec\n"
        "    files = resolve_files(spec, source)[1]\n"
        f"    assert files and all(p.startswith({str(site)!r}) for p in files), files\n"
        "assert main(['validate', str(demo_spec().with_name('ultrafeedback.yaml'))]) == 0  # its chat templates\n"
        "sys.exit(main(['validate', str(demo_spec())]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
