"""The one atomic-write helper: whole files or none, the user's permissions, no temp litter."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.storage import atomic_path, exclusive_lock, write_table, write_text
from tests.locks import held_elsewhere


def test_written_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import common.storage as storage

        importlib.reload(storage)  # the umask is read once, at import
        path = storage.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
        importlib.reload(storage)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_explicit_mode_is_kept_for_secrets(tmp_path):
    path = write_text(tmp_path / "salt", "s", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "t.parquet"
    write_table(pa.table({"x": [1, 2]}), dest)
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed mid-write")
    assert pq.read_table(dest).column("x").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_write(tmp_path):
    # A real process that dies (SIGKILL) holding a temp file of ours.
    code = ("import os, sys; from common.storage import atomic_path\n"
            "cm = atomic_path(sys.argv[1]); tmp = cm.__enter__(); tmp.write_bytes(b'x' * 10)\n"
            "print(tmp, flush=True); os.kill(os.getpid(), 9)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt")], capture_output=True, text=True)
    orphan = tmp_path / os.path.basename(done.stdout.strip())
    assert done.returncode == -9 and orphan.exists()
    live = tmp_path / f".model.pt.{os.getpid()}.abc.tmp"  # a writer that is still running: ours
    live.write_bytes(b"in progress")
    write_text(tmp_path / "model.pt", "new")
    assert not orphan.exists()
    assert live.exists()
    assert (tmp_path / "model.pt").read_text() == "new"


def test_the_exclusive_lock_keeps_other_processes_out_and_dies_with_its_holder(tmp_path):
    lock = tmp_path / "home" / ".ids.lock"
    with exclusive_lock(lock):
        code = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
        other = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True)
        assert other.returncode == 1 and "BlockingIOError" in other.stderr  # another process: refused
    assert not held_elsewhere(lock)
    # A holder killed inside the block (kill -9) leaves no lock behind.
    code = ("import os, sys; from common.storage import exclusive_lock\n"
            "cm = exclusive_lock(sys.argv[1]); cm.__enter__(); print('in', flush=True); sys.stdin.read(1)\n"
            "os.kill(os.getpid(), 9)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "in"  # inside the block now
    assert held_elsewhere(lock)
    holder.communicate("x")
    assert holder.returncode == -9 and not held_elsewhere(lock)
