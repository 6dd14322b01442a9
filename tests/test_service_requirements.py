"""No silent skips in CI: a test whose service is missing skips in a plain run, with one closing
line saying how to install it, and fails under CI=true (tests/servers.py, .ci/run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import SERVICE_INSTALL, in_ci, require_services

REPO = Path(__file__).resolve().parents[1]


def test_ci_is_read_from_the_environment_given():
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and in_ci({"CI": " TRUE "})
    assert not in_ci({}) and not in_ci({"CI": ""}) and not in_ci({"CI": "false"})


def test_missing_service_skips_in_a_plain_run_and_fails_under_ci():
    require_services([], {"CI": "true"})  # nothing missing: nothing happens, CI or not
    with pytest.raises(pytest.skip.Exception, match="missing service: redis-server"):
        require_services(["redis-server (apt-get install redis-server)"], {})
    with pytest.raises(pytest.fail.Exception, match="missing service: redis-server.*CI=true"):
        require_services(["redis-server (apt-get install redis-server)"], {"CI": "true"})


def _run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs_service.py").write_text(
        "from tests.servers import require_services\n\n"
        "def test_needs_a_frobnicator():\n"
        "    require_services(['frobnicator (apt-get install frobnicator)'])\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.servers",
                           "test_needs_service.py"], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_a_real_session_skips_with_one_line_and_fails_under_ci(tmp_path):
    plain = _run_pytest(tmp_path, None)
    assert plain.returncode == 0, plain.stdout
    assert "1 skipped" in plain.stdout
    summary = [line for line in plain.stdout.splitlines() if "skipped for a missing service" in line]
    assert summary == [f"1 tests skipped for a missing service (redis-server, PostgreSQL, chromium): "
                       f"{SERVICE_INSTALL} (CI=true makes them fail instead)"]
    ci = _run_pytest(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "1 failed" in ci.stdout and "frobnicator" in ci.stdout
    assert "skipped for a missing service" not in ci.stdout


def test_ci_script_exports_ci_and_stops_when_the_packages_do_not_install():
    script = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in script
    assert "chromium postgresql redis-server" in script
    assert "|| echo" not in script and "exit 1" in script
