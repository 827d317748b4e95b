"""The two spaces of a hybrid query searched at once (retrieval.neighbours.run_side_by_side)."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from retrieval import helper_threads
from retrieval.neighbours import PlannedSearch, run_side_by_side
from retrieval.policy import Candidate


def recording(engine: str, answer: int, threads: list[str]) -> PlannedSearch:
    def run():
        threads.append(threading.current_thread().name)
        return [Candidate(answer, 1.0)], {}
    return PlannedSearch(engine, run)


def test_a_second_in_memory_search_runs_on_a_helper_thread_meanwhile_and_answers_keep_their_order():
    threads: list[str] = []
    second_started = threading.Event()

    def first():  # still running when the second starts: the two overlap
        assert second_started.wait(timeout=10)
        threads.append(threading.current_thread().name)
        return [Candidate(1, 1.0)], {}

    def second():
        second_started.set()
        threads.append(threading.current_thread().name)
        return [Candidate(2, 0.5)], {}

    answers = run_side_by_side([PlannedSearch("faiss", first), PlannedSearch("faiss", second)])
    assert [found[0].image_id for found, _ in answers] == [1, 2]
    assert threads[1] == threading.current_thread().name and threads[0].startswith("helper")


def test_a_pgvector_search_stays_on_the_callers_thread_and_its_database_connection():
    threads: list[str] = []
    answers = run_side_by_side([recording("faiss", 1, threads), recording("pgvector", 2, threads)])
    assert [found[0].image_id for found, _ in answers] == [1, 2]
    assert threads == [threading.current_thread().name] * 2


def test_with_every_helper_busy_the_search_runs_here_instead_of_waiting(monkeypatch):
    busy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="busy")
    release = threading.Event()
    busy.submit(release.wait)
    monkeypatch.setattr(helper_threads, "_helpers", (os.getpid(), busy))
    threads: list[str] = []
    try:
        answers = run_side_by_side([recording("faiss", 1, threads), recording("faiss", 2, threads)])
    finally:
        release.set()
        busy.shutdown()
    assert [found[0].image_id for found, _ in answers] == [1, 2]
    assert threads == [threading.current_thread().name] * 2


def test_a_forked_process_gets_its_own_helpers(monkeypatch):
    inherited = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(helper_threads, "_helpers", (os.getpid() + 1, inherited))  # as a child sees its parent's
    assert helper_threads.helper_threads() is not inherited
    inherited.shutdown()
