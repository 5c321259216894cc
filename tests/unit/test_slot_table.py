"""The slot table: a delivery starts only with a global slot and its destinations' slots;
what a destination is."""

from __future__ import annotations

from relaymail.config import parse_config
from relaymail.delivery import DeliveryEngine
from relaymail.routing import Destination
from relaymail.slot_table import Grant, Limits, SlotTable

SLOW = Destination("slow.example", routed=False)
FAST = Destination("fast.example", routed=False)
SMARTHOST = Destination("*", routed=True)


def test_a_full_destination_takes_no_global_slot_and_leaves_room_for_others() -> None:
    table = SlotTable(Limits(total=5, per_destination=2))
    held = [table.grant([SLOW]), table.grant([SLOW])]
    assert held == [Grant(frozenset({SLOW}))] * 2

    assert table.grant([SLOW]) is None
    assert (table.in_flight, table.in_use(SLOW), table.full) == (2, 2, False)
    assert table.grant([FAST]) == Grant(frozenset({FAST}))


def test_a_message_to_several_destinations_gets_those_with_room() -> None:
    table = SlotTable(Limits(total=5, per_destination=1))
    assert table.grant([SLOW]) is not None
    assert table.grant([SLOW, FAST, SMARTHOST]) == Grant(frozenset({FAST, SMARTHOST}))
    assert table.in_flight == 2


def test_the_global_limit_stops_every_destination() -> None:
    table = SlotTable(Limits(total=2, per_destination=10))
    first, second = table.grant([SLOW]), table.grant([FAST])
    assert table.full and table.grant([SMARTHOST]) is None

    assert first is not None and second is not None
    table.release(first)
    assert table.grant([SMARTHOST]) == Grant(frozenset({SMARTHOST}))


def test_released_destinations_are_forgotten_so_memory_follows_the_deliveries() -> None:
    table = SlotTable(Limits(total=100, per_destination=2))
    grants = [table.grant([Destination(f"d{n}.example", routed=False)]) for n in range(50)]
    assert table.destinations_in_use == 50
    for grant in grants:
        assert grant is not None
        table.release(grant)
    assert (table.destinations_in_use, table.in_flight) == (0, 0)


def test_new_limits_apply_to_the_next_grant() -> None:
    table = SlotTable(Limits(total=10, per_destination=1))
    assert table.grant([SLOW]) is not None
    table.limits = Limits(total=10, per_destination=3)
    assert table.grant([SLOW]) is not None


def test_the_destination_is_the_route_that_carries_the_domain_else_the_domain() -> None:
    routes = {"exact.example": ["127.0.0.1:2525"], ".sub.example": ["127.0.0.1:2526"],
              "*": ["127.0.0.1:2527"]}  # fmt: skip
    engine = DeliveryEngine(parse_config({"routes": routes}))
    assert [engine.destination(d) for d in ("exact.example", "a.sub.example", "other.example")] == [
        Destination("exact.example", routed=True),
        Destination(".sub.example", routed=True),
        Destination("*", routed=True),
    ]
    assert engine.destination("[192.0.2.1]") == Destination("[192.0.2.1]", routed=False)
    unrouted = DeliveryEngine(parse_config({}))
    assert unrouted.destination("mx.example") == Destination("mx.example", routed=False)
