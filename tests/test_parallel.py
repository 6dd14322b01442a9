"""common.parallel.ordered_map with real spawned worker processes: results in input order
whatever the number of workers, and an item that kills its worker (segfault, abort) costs that
item only."""

import os
import signal

import pytest

from common.parallel import WorkerCrashes, describe_exit, ordered_map

SEGFAULTS, ABORTS = {5, 17}, {30}


# Module level: spawned workers import this module to find the function.
def square_or_crash(x: int) -> int:
    if x in SEGFAULTS:
        os.kill(os.getpid(), signal.SIGSEGV)
    if x in ABORTS:
        os.abort()
    return x * x


def always_killed(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def recorded(x: int, why: str) -> tuple[int, str]:
    return x, why


def test_the_items_that_kill_their_worker_are_identified_and_the_rest_come_back_in_order():
    expected = [recorded(x, "worker process died (exit code -11 / SIGSEGV)") if x in SEGFAULTS else
                recorded(x, "worker process died (exit code -6 / SIGABRT)") if x in ABORTS else x * x
                for x in range(40)]
    for workers in (2, 3):  # the same outputs whatever the number of workers
        assert list(ordered_map(square_or_crash, range(40), workers, on_crash=recorded)) == expected
    # One process asked for (isolate) instead of inline, where the first crash would end this test.
    assert list(ordered_map(square_or_crash, range(8), 1, on_crash=recorded, isolate=True)) == expected[:8]


def test_a_map_whose_every_item_kills_its_worker_ends_with_one_line():
    with pytest.raises(WorkerCrashes, match=r"exit code -9 / SIGKILL\), on 3 items in a row even one at a time"):
        list(ordered_map(always_killed, range(50), 2, on_crash=recorded, crash_limit=3))
    # Fewer items than the limit: each is its own crash record, and the map ends.
    assert list(ordered_map(always_killed, range(2), 2, on_crash=recorded)) == [
        (0, "worker process died (exit code -9 / SIGKILL)"), (1, "worker process died (exit code -9 / SIGKILL)")]


def test_without_on_crash_a_crash_is_an_error_and_fn_errors_stay_the_callers():
    with pytest.raises(WorkerCrashes, match=r"SIGSEGV\) on one item run alone"):
        list(ordered_map(square_or_crash, range(8), 2))
    results = ordered_map(fails_on_seven, range(12), 2)
    assert [next(results) for _ in range(7)] == list(range(7))
    with pytest.raises(ValueError, match="seven"):
        next(results)


def test_exit_codes_are_named():
    assert describe_exit(-11) == "worker process died (exit code -11 / SIGSEGV)"
    assert describe_exit(3) == "worker process died (exit code 3)"
