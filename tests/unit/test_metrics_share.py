"""``/metrics`` of all workers from any of them (``observability.metrics_share``): real
prometheus_client registries stand for the workers' exporters, a real directory is the one the
supervisor shares with them, and what ``merged`` answers is read back with Prometheus' parser."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opamp_fast.observability.metrics_share import WorkerMetricsShare, WorkerSlot


class Worker:
    """What one worker process exports: a counter, a labelled gauge and a histogram."""

    def __init__(self, messages: float, connected: dict[str, float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter("demo_messages", "Messages received.", registry=self.registry)
        self.messages.inc(messages)
        self.connected = Gauge(
            "demo_connected", "Connected agents.", ["transport"], registry=self.registry
        )
        for transport, value in connected.items():
            self.connected.labels(transport).set(value)
        self.latency = Histogram(
            "demo_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=self.registry
        )
        self.latency.observe(0.05)
        self.generated = 0

    def generate(self) -> bytes:
        self.generated += 1
        return generate_latest(self.registry)


def samples(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, by name and labels (parsed as Prometheus does)."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def make_share(directory: Path, slot: int, worker: Worker, **kwargs: float) -> WorkerMetricsShare:
    return WorkerMetricsShare(WorkerSlot(slot, directory), worker.generate, **kwargs)


def test_publish_writes_the_exposition_atomically_under_the_slot_name(tmp_path: Path) -> None:
    worker = Worker(3, {"ws": 2})
    share = make_share(tmp_path, 4, worker)
    share.publish()
    assert names(tmp_path) == ["worker-4.prom"]  # no .tmp left
    assert (tmp_path / "worker-4.prom").read_bytes() == generate_latest(worker.registry)
    worker.messages.inc(2)
    share.publish()  # replaces the old file
    assert names(tmp_path) == ["worker-4.prom"]
    published = samples((tmp_path / "worker-4.prom").read_bytes())
    assert published["demo_messages_total", labels()] == 5


def test_merged_labels_every_sample_with_its_worker(tmp_path: Path) -> None:
    workers = {0: Worker(10, {"ws": 4, "http": 1}), 1: Worker(7, {"ws": 3})}
    shares = {slot: make_share(tmp_path, slot, w) for slot, w in workers.items()}
    shares[1].publish()
    before = workers[0].generated
    merged = samples(shares[0].merged())
    assert workers[0].generated == before + 1  # its own part is generated fresh
    assert merged["demo_messages_total", labels(worker="0")] == 10
    assert merged["demo_messages_total", labels(worker="1")] == 7
    assert merged["demo_connected", labels(transport="ws", worker="0")] == 4
    assert merged["demo_connected", labels(transport="http", worker="0")] == 1
    assert merged["demo_connected", labels(transport="ws", worker="1")] == 3
    assert ("demo_connected", labels(transport="http", worker="1")) not in merged
    for worker in ("0", "1"):  # a histogram keeps its buckets, each with its worker
        assert merged["demo_latency_seconds_bucket", labels(le="0.1", worker=worker)] == 1
        assert merged["demo_latency_seconds_bucket", labels(le="+Inf", worker=worker)] == 1
        assert merged["demo_latency_seconds_count", labels(worker=worker)] == 1
        assert merged["opamp_fast_worker_up", labels(worker=worker)] == 1
    # No sample lost its worker label, and nothing is there twice (checked by samples()).
    assert all(dict(key[1]).get("worker") in ("0", "1") for key in merged)


def test_any_worker_answers_for_all_of_them(tmp_path: Path) -> None:
    """Three workers publishing into one directory: whichever answers the scrape, the answer
    holds everyone, its own part fresh and the others' as last published."""
    workers = [Worker(slot + 1, {"ws": slot}) for slot in range(3)]
    shares = [make_share(tmp_path, slot, w) for slot, w in enumerate(workers)]
    for share in shares:
        share.publish()
    workers[2].messages.inc(100)  # not published yet
    for slot, share in enumerate(shares):
        merged = samples(share.merged())
        for other in range(3):
            expected = other + 1 + (100 if other == 2 == slot else 0)
            assert merged["demo_messages_total", labels(worker=str(other))] == expected
            assert merged["opamp_fast_worker_up", labels(worker=str(other))] == 1


def test_own_published_file_is_not_read_back(tmp_path: Path) -> None:
    worker = Worker(1, {})
    share = make_share(tmp_path, 0, worker)
    share.publish()
    worker.messages.inc(41)
    merged = samples(share.merged())
    assert merged["demo_messages_total", labels(worker="0")] == 42  # not the stale file's 1
    assert [key for key in merged if key[0] == "opamp_fast_worker_up"] == [
        ("opamp_fast_worker_up", labels(worker="0"))
    ]


def test_a_worker_that_stopped_publishing_is_left_out_and_reported_down(tmp_path: Path) -> None:
    live, gone = Worker(1, {"ws": 1}), Worker(2, {"ws": 2})
    share = make_share(tmp_path, 0, live, stale_after_s=30.0)
    make_share(tmp_path, 1, gone).publish()
    make_share(tmp_path, 2, Worker(3, {})).publish()
    old = time.time() - 31.0
    os.utime(tmp_path / "worker-1.prom", (old, old))
    merged = samples(share.merged())
    assert merged["opamp_fast_worker_up", labels(worker="0")] == 1
    assert merged["opamp_fast_worker_up", labels(worker="1")] == 0
    assert merged["opamp_fast_worker_up", labels(worker="2")] == 1
    assert not [
        key for key in merged if ("worker", "1") in key[1] and key[0] != "opamp_fast_worker_up"
    ]
    assert merged["demo_messages_total", labels(worker="2")] == 3


def test_a_part_that_cannot_be_read_counts_as_down(tmp_path: Path) -> None:
    """A sibling's file that cannot be read (here a directory in its place, as reliable a
    failure as a file renamed away between the listing and the read) is that worker down,
    not a failed scrape."""
    share = make_share(tmp_path, 0, Worker(1, {}))
    (tmp_path / "worker-3.prom").mkdir()
    merged = samples(share.merged())
    assert merged["opamp_fast_worker_up", labels(worker="3")] == 0
    assert merged["demo_messages_total", labels(worker="0")] == 1


def test_alone_in_the_directory(tmp_path: Path) -> None:
    merged = samples(make_share(tmp_path, 0, Worker(0, {})).merged())
    assert merged["opamp_fast_worker_up", labels(worker="0")] == 1
    assert merged["demo_messages_total", labels(worker="0")] == 0


def published_messages(path: Path) -> float | None:
    """``demo_messages_total`` as ``path`` holds it now (None before the first publication)."""
    if not path.exists():
        return None
    return samples(path.read_bytes()).get(("demo_messages_total", labels()))


def test_label_values_with_braces_spaces_and_quotes_survive_the_merge(tmp_path: Path) -> None:
    """The merge adds the worker label to each sample line as text: label values that hold
    the characters a line is cut at must come through unchanged."""
    odd = ["a b", "x{y} 1.0", 'say "hi"', "back\\slash", "line\nbreak", ""]
    workers = []
    for slot in range(2):
        worker = Worker(slot, {})
        gauge = Gauge("demo_odd", "Odd labels.", ["value"], registry=worker.registry)
        for n, value in enumerate(odd):
            gauge.labels(value).set(10 * slot + n)
        workers.append(worker)
    shares = [make_share(tmp_path, slot, w) for slot, w in enumerate(workers)]
    shares[1].publish()
    merged = samples(shares[0].merged())
    for slot in range(2):
        for n, value in enumerate(odd):
            assert merged["demo_odd", labels(value=value, worker=str(slot))] == 10 * slot + n
    own = samples(generate_latest(workers[0].registry))
    assert len(merged) == 2 * len(own) + 2  # every sample of both, and two worker_up


async def published(path: Path, value: float) -> None:
    """Until ``path`` holds ``demo_messages_total == value`` (10 s at most)."""
    with anyio.fail_after(10):
        while published_messages(path) != value:
            await anyio.sleep(0.01)


async def test_a_worker_publishes_at_start_then_once_per_scrape(tmp_path: Path) -> None:
    """An idle scrape interval costs nothing: after its first publication a worker renders
    only when a scrape asks, once per scrape."""
    worker = Worker(0, {})
    share = make_share(tmp_path, 1, worker, poll_s=0.02)
    path = tmp_path / "worker-1.prom"
    answering = make_share(tmp_path, 0, Worker(0, {}), poll_s=0.02)
    async with anyio.create_task_group() as tg:
        await tg.start(share.run)
        await published(path, 0)  # the first publication does not wait for a scrape
        generated = worker.generated
        worker.messages.inc(5)
        await anyio.sleep(0.3)  # fifteen ticks, nobody scraping
        assert worker.generated == generated
        assert published_messages(path) == 0
        merged = samples(await answering.scrape())
        assert merged["demo_messages_total", labels(worker="1")] == 5  # asked, and answered
        assert worker.generated == generated + 1
        await anyio.sleep(0.3)
        assert worker.generated == generated + 1  # once per scrape
        worker.messages.inc(1)
        merged = samples(await answering.scrape())
        assert merged["demo_messages_total", labels(worker="1")] == 6
        assert worker.generated == generated + 2
        tg.cancel_scope.cancel()
    assert names(tmp_path) == ["scraped", "worker-1.prom"]


async def test_every_sibling_answers_a_scrape_with_its_current_figures(
    tmp_path: Path,
) -> None:
    """Parts published long ago are not what a scrape answers with: each sibling renders
    afresh for it, and all of them are up."""
    siblings = {1: Worker(1, {}), 2: Worker(2, {})}
    shares = {slot: make_share(tmp_path, slot, w, poll_s=0.05) for slot, w in siblings.items()}
    answering = make_share(tmp_path, 0, Worker(0, {}), poll_s=0.05)
    async with anyio.create_task_group() as tg:
        for share in shares.values():
            await tg.start(share.run)
        for slot in shares:
            await published(tmp_path / f"worker-{slot}.prom", slot)
            old = time.time() - 3600.0  # an hour without a scrape
            os.utime(tmp_path / f"worker-{slot}.prom", (old, old))
            siblings[slot].messages.inc(10)
        merged = samples(await answering.scrape())
        tg.cancel_scope.cancel()
    for slot in (1, 2):
        assert merged["opamp_fast_worker_up", labels(worker=str(slot))] == 1
        assert merged["demo_messages_total", labels(worker=str(slot))] == slot + 10


async def test_a_sibling_that_does_not_answer_is_down_after_the_wait(
    tmp_path: Path,
) -> None:
    """A file left by a worker that is gone: the scrape waits for it a bounded time
    (answer_timeout_s), then answers without it."""
    make_share(tmp_path, 1, Worker(1, {})).publish()
    old = time.time() - 3600.0
    os.utime(tmp_path / "worker-1.prom", (old, old))
    answering = make_share(tmp_path, 0, Worker(7, {}), answer_timeout_s=0.2)
    with anyio.fail_after(5):
        merged = samples(await answering.scrape())
    assert merged["opamp_fast_worker_up", labels(worker="1")] == 0
    assert merged["demo_messages_total", labels(worker="0")] == 7


async def test_a_slow_sibling_counts_with_its_last_part_while_it_is_recent(tmp_path: Path) -> None:
    """A sibling that does not answer within the wait but published within stale_after_s is
    still in the answer, with what it published last."""
    make_share(tmp_path, 1, Worker(3, {})).publish()
    answering = make_share(tmp_path, 0, Worker(0, {}), answer_timeout_s=0.1, stale_after_s=30.0)
    merged = samples(await answering.scrape())
    assert merged["opamp_fast_worker_up", labels(worker="1")] == 1
    assert merged["demo_messages_total", labels(worker="1")] == 3


class AgentsWorker(Worker):
    """A worker exporting per-agent series the way the exporter does, with its flag."""

    def __init__(self, agents: list[str]) -> None:
        super().__init__(0, {})
        last_seen = Gauge(
            "agent_last_seen_seconds",
            "Last seen.",
            ["agent_id"],
            registry=self.registry,
        )
        for agent in agents:
            last_seen.labels(agent).set(1.0)
        Gauge("opamp_fast_agent_series_suppressed", "Suppressed.", registry=self.registry).set(0)


@pytest.mark.parametrize(("cap", "exported"), [(6, True), (5, False)])
def test_the_per_agent_cap_holds_for_all_workers_together(
    tmp_path: Path, cap: int, exported: bool
) -> None:
    """Three workers with two agents each: six per-agent series in all. Under a cap of 6 they
    are all there; under 5 none is, and every worker's suppressed flag says so, as one
    process with six agents would answer."""
    workers = [AgentsWorker([f"a{slot}", f"b{slot}"]) for slot in range(3)]
    shares = [make_share(tmp_path, slot, w, agent_series_max=cap) for slot, w in enumerate(workers)]
    for share in shares[1:]:
        share.publish()
    merged = samples(shares[0].merged())
    per_agent = [key for key in merged if key[0] == "agent_last_seen_seconds"]
    assert len(per_agent) == (6 if exported else 0)
    for slot in range(3):
        flag = merged["opamp_fast_agent_series_suppressed", labels(worker=str(slot))]
        assert flag == (0 if exported else 1)
        assert merged["demo_messages_total", labels(worker=str(slot))] == 0  # the rest stays


@pytest.mark.parametrize("slot", [0, 12])
def test_slot_names_round_trip(tmp_path: Path, slot: int) -> None:
    """The slot in a file name is read back as the worker label (two-digit slots too)."""
    make_share(tmp_path, slot, Worker(slot, {})).publish()
    merged = samples(make_share(tmp_path, 99, Worker(0, {})).merged())
    assert merged["demo_messages_total", labels(worker=str(slot))] == slot
    assert merged["opamp_fast_worker_up", labels(worker=str(slot))] == 1
