"""Spent stream tickets in one process's memory (the Redis twin is in test_security_shared)."""

from __future__ import annotations

import time

from jobcast.server.ops.shared_state import MemorySpentTickets


async def test_a_ticket_is_spent_once() -> None:
    spent = MemorySpentTickets()
    later = time.time() + 60
    assert await spent.spend("a", later)
    assert not await spent.spend("a", later)
    assert await spent.spend("b", later)


async def test_records_are_forgotten_once_the_ticket_cannot_be_presented() -> None:
    spent = MemorySpentTickets()
    for n in range(3):
        await spent.spend(f"gone{n}", time.time() - 1)
    await spent.spend("live", time.time() + 60)
    assert len(spent) == 1


async def test_spending_stays_cheap_with_many_live_tickets() -> None:
    # Rebuilding the records on every spend past a threshold made this quadratic: 20,000 spends
    # took seconds. Pruning by a heap of expiries costs O(log n) each.
    spent = MemorySpentTickets()
    later = time.time() + 60
    started = time.perf_counter()
    for n in range(20_000):
        assert await spent.spend(f"t{n}", later)
    assert time.perf_counter() - started < 1.0
    assert len(spent) == 20_000
