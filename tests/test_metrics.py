"""``/metrics`` reports what the hub did, in Prometheus text format."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import EventStream, LiveServer


def samples(text: str) -> dict[str, float]:
    return {
        sample.name + (str(sorted(sample.labels.items())) if sample.labels else ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_publishing_delivery_and_resets(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "m"}, headers=server.auth()) as events:
        response = await client.post(
            url,
            json=[{"topic": "m", "type": "t", "data": n} for n in range(3)],
            headers=server.auth("w", "service"),
        )
        assert response.status_code == 202
        await events.take(3)
        scrape = await client.get(f"{server.url}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    values = samples(scrape.text)
    assert values["jobcast_events_published_total"] == 3
    assert values["jobcast_events_delivered_total"] == 3
    assert values["jobcast_subscriptions"] == 1
    assert values["jobcast_publish_to_write_seconds_count"] >= 1
    async with EventStream(
        client, url, params={"topic": "m", "last_event_id": "junk-1"}, headers=server.auth()
    ) as events:
        assert (await events.next()).event == "reset"
    values = samples((await client.get(f"{server.url}/metrics")).text)
    assert values["jobcast_resets_total[('reason', 'history_lost')]"] == 1  # another epoch
    assert values["jobcast_replays_total"] == 1
