"""The run directory's lock (repro.runs.lock) under a race: with a stale lock.json of a dead process, of
several starts at the same moment exactly one gets the lock (issue 19: 17 of 200 racing pairs both did);
a live holder, in another process, is named."""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading

from repro.errors import ReproError
from repro.runs import lock
from tests.test_errors import second_pid_that_is_gone


def _race(run_dir, racers: int) -> int:
    """`racers` threads call acquire at the same moment (each its own open file description, so flock
    sets them against each other as it does processes); the winner holds on until all have tried."""
    barrier, wins = threading.Barrier(racers), []

    def attempt() -> None:
        barrier.wait()
        try:
            held = lock.acquire(run_dir)
            wins.append(1)
        except ReproError:
            held = None
        barrier.wait()
        lock.release(held)

    threads = [threading.Thread(target=attempt) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return len(wins)


def test_exactly_one_of_racing_starts_takes_a_stale_lock(tmp_path):
    gone = second_pid_that_is_gone()
    winners = []
    for trial in range(200):
        d = tmp_path / str(trial)
        d.mkdir()
        (d / lock.LOCK).write_text(json.dumps({"pid": gone, "host": socket.gethostname()}))
        winners.append(_race(d, 4))
        assert not (d / lock.LOCK).exists()  # the winner's release removed it
    assert winners == [1] * 200


def test_a_live_holder_is_named_and_a_dead_ones_lock_is_free(tmp_path):
    mine = lock.acquire(tmp_path)
    assert lock.held(tmp_path / lock.LOCK)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def other():
        try:
            lock.acquire(tmp_path)
            q.put("acquired")
        except ReproError as e:
            q.put(str(e))

    p = ctx.Process(target=other)
    p.start()
    p.join(timeout=60)
    import os

    assert f"in use by pid {os.getpid()} on this host" in q.get(timeout=5)
    lock.release(mine)
    assert not lock.held(tmp_path / lock.LOCK) and not (tmp_path / lock.LOCK).exists()
