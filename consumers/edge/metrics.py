"""The edge verifiers' metrics, read at scrape time from the verifiers themselves.

``verify`` runs about a million times a second on a warm cache: incrementing a
Prometheus counter there would cost a fifth of that. The verifier already counts its
results in a plain ``Counter`` (``stats``, also shown by ``/healthz``); this collector
turns those counts and the staleness into metric families when Prometheus asks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.telemetry.metrics import REGISTRY


class Observed(Protocol):
    @property
    def verifier_id(self) -> str: ...

    @property
    def stats(self) -> Mapping[str, int]: ...

    def staleness(self) -> float: ...

    def broadcaster_silence(self) -> float: ...

    def serving(self) -> bool: ...


def verify_results(stats: Mapping[str, int]) -> Iterator[tuple[str, int]]:
    """("accepted" | reject reason, count) from the verifier's own counts."""
    for key, count in stats.items():
        if key == "accepted":
            yield key, count
        elif key.startswith("rejected."):
            yield key.removeprefix("rejected."), count


class VerifierCollector(Collector):
    def __init__(self) -> None:
        self.verifiers: weakref.WeakSet[Observed] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        verify = CounterMetricFamily(
            "ledger_edge_verify",
            "Access tokens verified, by verifier and result (accepted or the reject reason)",
            labels=["verifier", "result"],
        )
        staleness = GaugeMetricFamily(
            "ledger_edge_staleness_seconds",
            "Seconds since the verifier last knew it was connected and caught up (+Inf: never)",
            labels=["verifier"],
        )
        silence = GaugeMetricFamily(
            "ledger_edge_broadcaster_silence_seconds",
            "Seconds since the broadcaster's last heartbeat reached the verifier",
            labels=["verifier"],
        )
        serving = GaugeMetricFamily(
            "ledger_edge_serving", "1 while the verifier serves, 0 while it fails closed", labels=["verifier"]
        )
        for v in list(self.verifiers):
            for result, count in verify_results(v.stats):
                verify.add_metric([v.verifier_id, result], count)
            staleness.add_metric([v.verifier_id], v.staleness())
            silence.add_metric([v.verifier_id], v.broadcaster_silence())
            serving.add_metric([v.verifier_id], 1.0 if v.serving() else 0.0)
        yield from (verify, staleness, silence, serving)


COLLECTOR = VerifierCollector()
REGISTRY.register(COLLECTOR)


def watch(verifier: Observed) -> None:
    COLLECTOR.verifiers.add(verifier)


def forget(verifier: Observed) -> None:
    COLLECTOR.verifiers.discard(verifier)
