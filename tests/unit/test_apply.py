"""The removal phase's request pool: the earliest repository's calls go first, a failure stops the rest.

How a failing DELETE stops the phase is shown against the real registry in
tests/integration/test_removal_requests.py.
"""

from __future__ import annotations

import threading

import pytest

from gc_daemon.apply import _Requests, _Stopped


def test_calls_run_in_order_of_their_repository_turn_not_arrival() -> None:
    pool = _Requests(1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = threading.Thread(target=pool.map, args=(0, lambda _: gate.wait(5), [None]))
        blocker.start()
        later = threading.Thread(target=pool.map, args=(2, ran.append, ["late-1", "late-2"]))
        later.start()
        while pool._queue.qsize() < 2:
            threading.Event().wait(0.01)
        earlier = threading.Thread(target=pool.map, args=(1, ran.append, ["early-1", "early-2"]))
        earlier.start()
        while pool._queue.qsize() < 4:
            threading.Event().wait(0.01)
        gate.set()
        for thread in (blocker, later, earlier):
            thread.join(5)
    finally:
        pool.close()
    assert ran == ["early-1", "early-2", "late-1", "late-2"]


def test_results_come_back_in_item_order_and_errors_are_raised() -> None:
    pool = _Requests(3)
    try:
        assert pool.map(0, lambda n: n * n, list(range(20))) == [n * n for n in range(20)]

        def boom(n: int) -> int:
            if n == 3:
                raise ValueError("three")
            return n

        with pytest.raises(ValueError, match="three"):
            pool.map(0, boom, list(range(6)))
    finally:
        pool.close()


def test_after_a_failure_queued_calls_are_not_sent() -> None:
    pool = _Requests(1)
    sent: list[int] = []
    try:
        pool.failed.set()
        with pytest.raises(_Stopped):
            pool.map(0, sent.append, [1, 2, 3])
    finally:
        pool.close()
    assert sent == []
