"""Large bodies take a slot: at most `per_key` of one key and `total` of everyone are served at once, so a key
that sends megabyte bodies on many connections queues behind itself; its slots are forgotten when done."""

from __future__ import annotations

import asyncio

from stillwatch.guard.middleware import LargeBodies


def test_one_key_queues_behind_itself_and_others_still_get_slots():
    async def main() -> tuple[int, int, int, int]:
        large = LargeBodies(total=3, per_key=1)
        running: dict[str, int] = {}
        peak: dict[str, int] = {}

        async def request(key: str) -> None:
            async with large.slot(key):
                running[key] = running.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), running[key])
                peak["all"] = max(peak.get("all", 0), sum(v for k, v in running.items() if k != "all"))
                await asyncio.sleep(0.01)
                running[key] -= 1

        await asyncio.gather(*(request("attacker") for _ in range(6)), request("honest"), request(None))
        return peak["attacker"], peak["honest"], peak["all"], len(large.keys)

    attacker, honest, everyone, left = asyncio.run(main())
    assert attacker == 1 and honest == 1  # the attacker's six ran one at a time; the honest key was not held
    assert everyone == 3  # the attacker, the honest key and the keyless request ran side by side
    assert left == 0  # nothing kept per key once its requests are done
