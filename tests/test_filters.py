"""Destination filters: sample, drop, drop properties, allow properties — in Segment's order."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.deliver.filters import DestinationFilters, FilterError, FilterOutcome, compile_filters


def track(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "user-1",
        "properties": {"total": 42, "email": "ana@example.com", "coupon": "SUMMER", "currency": "EUR"},
        "context": {"ip": "10.1.2.3", "library": {"name": "analytics.js"}},
    }
    event.update(fields)
    return event


def identify(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "identify",
        "messageId": "m-2",
        "userId": "user-1",
        "traits": {
            "email": "ana@example.com",
            "name": "Ana",
            "address": {"street": "1 Main St", "city": "Lisbon", "zip": "1000"},
        },
        "context": {"ip": "10.1.2.3"},
    }
    event.update(fields)
    return event


def apply(rules: list[Any], event: dict[str, Any]) -> FilterOutcome:
    return compile_filters(rules).apply(event)


def kept(rules: list[Any], event: dict[str, Any]) -> dict[str, Any]:
    outcome = apply(rules, event)
    assert outcome.event is not None, outcome
    assert outcome.reason is None
    return outcome.event


def rule_error(rules: Any) -> str:
    with pytest.raises(FilterError) as caught:
        compile_filters(rules)
    return str(caught.value)


# ---- no rules, drop ----------------------------------------------------------------------


def test_no_rules_pass_the_event_through_untouched() -> None:
    event = track()
    outcome = apply([], event)
    assert outcome == FilterOutcome(event, None)
    assert outcome.event is event
    assert DestinationFilters().apply(event).event is event


def test_a_mapping_that_is_not_a_dict_comes_back_as_a_dict() -> None:
    from types import MappingProxyType

    outcome = compile_filters([]).apply(MappingProxyType({"type": "track"}))
    assert outcome.event == {"type": "track"}
    assert type(outcome.event) is dict


def test_drop_without_a_condition_drops_every_event() -> None:
    assert apply([{"drop": True}], track()) == FilterOutcome(None, "filter")
    assert apply([{"drop": True}], identify()) == FilterOutcome(None, "filter")


def test_drop_with_a_condition_drops_only_matching_events() -> None:
    rules = [{"if": 'type = "track" and event = "Order Completed"', "drop": True}]
    assert apply(rules, track()) == FilterOutcome(None, "filter")
    assert apply(rules, track(event="Product Viewed")).event is not None
    assert apply(rules, identify()).event is not None


def test_any_matching_drop_rule_drops() -> None:
    rules = [{"if": 'event = "A"', "drop": True}, {"if": 'event = "B"', "drop": True}]
    assert apply(rules, track(event="A")).reason == "filter"
    assert apply(rules, track(event="B")).reason == "filter"
    assert apply(rules, track(event="C")).reason is None


def test_only_send_is_a_drop_with_a_negated_condition() -> None:
    rules = [{"if": '!(event = "Order Completed" or event = "Signed Up")', "drop": True}]
    assert apply(rules, track()).event is not None
    assert apply(rules, track(event="Signed Up")).event is not None
    assert apply(rules, track(event="Page Scrolled")).reason == "filter"


# ---- sampling ----------------------------------------------------------------------------


def test_sample_zero_drops_everything_and_one_hundred_keeps_everything() -> None:
    for index in range(200):
        event = track(messageId=f"m-{index}")
        assert apply([{"sample": 0}], event) == FilterOutcome(None, "sampling")
        assert apply([{"sample": 100}], event).event is event
        assert apply([{"sample": 100.0}], event).event is event


def test_sampling_is_deterministic_per_message_id() -> None:
    first = compile_filters([{"sample": 50}])
    second = compile_filters([{"sample": 50}])
    for index in range(500):
        event = track(messageId=f"message-{index}")
        decision = first.apply(event).event is not None
        assert (first.apply(event).event is not None) is decision
        assert (second.apply(copy.deepcopy(event)).event is not None) is decision
        assert (
            second.apply(track(messageId=f"message-{index}", event="Other")).event is not None
        ) is decision


# The hash is part of the contract: changing it would reshuffle which users a sampled
# destination sees after an upgrade. These exact counts pin it.
@pytest.mark.parametrize(("percent", "observed"), [(10, 998), (25, 2458), (50, 4989)])
def test_sampling_keeps_about_the_percentage_over_fixed_ids(percent: int, observed: int) -> None:
    filters = compile_filters([{"sample": percent}])
    count = sum(filters.apply({"messageId": f"message-{index}"}).event is not None for index in range(10_000))
    assert count == observed
    target = 10_000 * percent / 100
    assert abs(count - target) <= 0.02 * target


def test_sample_by_user_keeps_or_drops_all_of_a_users_events_together() -> None:
    filters = compile_filters([{"sample": 30, "sample_by": "userId"}])
    users_kept = 0
    for user in range(2_000):
        decisions = {
            filters.apply(track(userId=f"user-{user}", messageId=f"m-{user}-{n}")).event is not None
            for n in range(10)
        }
        assert len(decisions) == 1, f"user-{user} was split"
        users_kept += decisions.pop()
    assert users_kept == 599
    assert abs(users_kept - 600) <= 0.02 * 600


def test_sample_by_a_nested_field() -> None:
    filters = compile_filters([{"sample": 50, "sample_by": "context.groupId"}])
    for group in range(50):
        decisions = {
            filters.apply(track(context={"groupId": f"g-{group}"}, messageId=f"m-{n}")).event is not None
            for n in range(10)
        }
        assert len(decisions) == 1


def test_sample_by_falls_back_to_message_id_when_the_field_is_missing_or_null() -> None:
    by_user = compile_filters([{"sample": 50, "sample_by": "userId"}])
    by_message = compile_filters([{"sample": 50}])
    for index in range(300):
        anonymous = track(messageId=f"anon-{index}")
        del anonymous["userId"]
        assert (by_user.apply(anonymous).event is None) is (by_message.apply(anonymous).event is None)
        null_user = track(messageId=f"anon-{index}", userId=None)
        assert (by_user.apply(null_user).event is None) is (by_message.apply(null_user).event is None)


def test_sampling_never_raises_on_odd_keys() -> None:
    filters = compile_filters([{"sample": 50, "sample_by": "userId"}])
    for odd in [12345, 1.5, True, {"a": 1}, ["x"], "\ud800", ""]:
        assert filters.apply(track(userId=odd)).reason in (None, "sampling")
    assert compile_filters([{"sample": 50}]).apply({"type": "track"}).reason in (None, "sampling")


def test_sample_with_a_condition_only_samples_matching_events() -> None:
    rules = [{"if": 'event = "Page Scrolled"', "sample": 0}]
    assert apply(rules, track(event="Page Scrolled")) == FilterOutcome(None, "sampling")
    assert apply(rules, track()).event is not None


# ---- drop properties ---------------------------------------------------------------------


def test_drop_properties_removes_the_named_paths() -> None:
    event = track()
    result = kept([{"drop_properties": ["properties.email", "context.ip"]}], event)
    assert result["properties"] == {"total": 42, "coupon": "SUMMER", "currency": "EUR"}
    assert result["context"] == {"library": {"name": "analytics.js"}}
    assert result["event"] == "Order Completed"


def test_drop_properties_reaches_nested_paths_and_shares_what_did_not_change() -> None:
    event = identify()
    result = kept([{"drop_properties": ["traits.address.street"]}], event)
    assert result["traits"]["address"] == {"city": "Lisbon", "zip": "1000"}
    assert result["traits"]["email"] == "ana@example.com"
    assert result["context"] is event["context"]
    assert result is not event


def test_drop_properties_applies_to_each_object_in_a_list() -> None:
    event = track(properties={"products": [{"sku": "A", "price": 1}, {"sku": "B", "price": 2}, "odd"]})
    result = kept([{"drop_properties": ["properties.products.price"]}], event)
    assert result["properties"]["products"] == [{"sku": "A"}, {"sku": "B"}, "odd"]


def test_drop_properties_of_absent_paths_changes_nothing() -> None:
    event = track()
    rules = [
        {"drop_properties": ["properties.nope", "traits.email", "properties.total.deeper", "context.x.y"]}
    ]
    assert kept(rules, event) is event


def test_drop_properties_with_a_condition() -> None:
    rules = [{"if": 'type = "identify"', "drop_properties": ["traits.email"]}]
    assert "email" not in kept(rules, identify())["traits"]
    assert kept(rules, track())["properties"]["email"] == "ana@example.com"


def test_whole_path_wins_over_a_deeper_one() -> None:
    for paths in (["traits.address", "traits.address.street"], ["traits.address.street", "traits.address"]):
        assert "address" not in kept([{"drop_properties": paths}], identify())["traits"]


# ---- allow properties --------------------------------------------------------------------


def test_allow_properties_keeps_only_the_listed_properties() -> None:
    event = track()
    result = kept(
        [{"allow_properties": ["properties.total", "properties.currency", "properties.nope"]}], event
    )
    assert result["properties"] == {"total": 42, "currency": "EUR"}
    assert result["context"] is event["context"]
    assert {key: value for key, value in result.items() if key != "properties"} == {
        key: value for key, value in event.items() if key != "properties"
    }


def test_allow_properties_restricts_only_the_objects_it_names() -> None:
    event = identify(properties={"a": 1})
    result = kept([{"allow_properties": ["traits.email"]}], event)
    assert result["traits"] == {"email": "ana@example.com"}
    assert result["properties"] is event["properties"]


def test_allow_properties_restricts_properties_and_traits_together() -> None:
    event = identify(properties={"a": 1, "b": 2})
    result = kept([{"allow_properties": ["traits.name", "properties.b"]}], event)
    assert result["traits"] == {"name": "Ana"}
    assert result["properties"] == {"b": 2}


def test_allow_properties_reaches_nested_paths() -> None:
    result = kept([{"allow_properties": ["traits.address.city", "traits.name"]}], identify())
    assert result["traits"] == {"name": "Ana", "address": {"city": "Lisbon"}}


def test_allow_properties_drops_what_it_cannot_descend_into() -> None:
    event = identify(traits={"address": "1 Main St, Lisbon", "name": "Ana"})
    assert kept([{"allow_properties": ["traits.address.city"]}], event)["traits"] == {}


def test_allow_properties_applies_to_each_object_in_a_list() -> None:
    event = track(properties={"products": [{"sku": "A", "price": 1}, {"sku": "B"}, "odd"], "total": 3})
    result = kept([{"allow_properties": ["properties.products.sku"]}], event)
    assert result["properties"] == {"products": [{"sku": "A"}, {"sku": "B"}]}


def test_allow_properties_with_everything_allowed_changes_nothing() -> None:
    event = track(properties={"a": 1})
    assert kept([{"allow_properties": ["properties.a", "properties.b"]}], event) is event


def test_allow_properties_on_an_event_without_the_object_changes_nothing() -> None:
    event = identify()
    assert kept([{"allow_properties": ["properties.total"]}], event) is event


def test_allow_properties_empties_an_object_that_is_not_an_object() -> None:
    assert kept([{"allow_properties": ["properties.a"]}], track(properties="junk"))["properties"] == {}


def test_successive_allow_rules_intersect() -> None:
    rules = [
        {"allow_properties": ["properties.total", "properties.email"]},
        {"allow_properties": ["properties.total", "properties.coupon"]},
    ]
    assert kept(rules, track())["properties"] == {"total": 42}


# ---- order -------------------------------------------------------------------------------


def test_sampling_comes_before_dropping_whatever_the_rule_order() -> None:
    for rules in ([{"drop": True}, {"sample": 0}], [{"sample": 0}, {"drop": True}]):
        assert apply(rules, track()) == FilterOutcome(None, "sampling")


def test_dropping_comes_before_property_changes() -> None:
    rules = [
        {"drop_properties": ["properties.email"]},
        {"allow_properties": ["properties.total"]},
        {"drop": True},
    ]
    assert apply(rules, track()) == FilterOutcome(None, "filter")


def test_drop_properties_comes_before_allow_properties_whatever_the_rule_order() -> None:
    allow = {"allow_properties": ["properties.total", "properties.email"]}
    drop = {"drop_properties": ["properties.email", "properties.total.cents"]}
    for rules in ([allow, drop], [drop, allow]):
        assert kept(rules, track())["properties"] == {"total": 42}


def test_every_condition_sees_the_event_as_it_arrived() -> None:
    rules = [
        {"drop_properties": ["properties.email"]},
        {"if": "properties.email exists", "allow_properties": ["properties.total"]},
    ]
    assert kept(rules, track())["properties"] == {"total": 42}


# ---- never mutating ----------------------------------------------------------------------


EVERY_ACTION = [
    {"if": 'event = "Never"', "drop": True},
    {"sample": 100, "sample_by": "userId"},
    {
        "drop_properties": [
            "properties.email",
            "traits.address.zip",
            "context.ip",
            "properties.products.price",
        ]
    },
    {"allow_properties": ["properties.total", "properties.products.sku", "traits.address", "traits.name"]},
]


def test_the_input_event_is_never_mutated() -> None:
    for event in (track(properties={"total": 1, "products": [{"sku": "A", "price": 1}]}), identify()):
        before = copy.deepcopy(event)
        outcome = apply(EVERY_ACTION, event)
        assert event == before
        assert outcome.event is not None
        outcome.event["properties"] = "mutated later"
        assert event == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=15,
)
objects = st.dictionaries(
    st.sampled_from(["total", "email", "products", "address", "a"]), json_values, max_size=4
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify"])},
    optional={
        "messageId": st.text(max_size=8),
        "userId": json_values,
        "properties": objects | json_values,
        "traits": objects,
        "context": objects,
    },
)


@settings(max_examples=300)
@given(events)
def test_filters_never_mutate_and_never_raise(event: dict[str, Any]) -> None:
    before = copy.deepcopy(event)
    outcome = apply(EVERY_ACTION, event)
    assert event == before
    assert outcome.reason in (None, "sampling", "filter")
    assert (outcome.event is None) is (outcome.reason is not None)


@settings(max_examples=300)
@given(events, st.lists(st.sampled_from(["properties.a", "properties.total", "traits.a.b"]), min_size=1))
def test_drop_then_allow_of_the_same_paths_leaves_none_of_them(
    event: dict[str, Any], paths: list[str]
) -> None:
    result = kept([{"allow_properties": paths}, {"drop_properties": paths}], event)
    for path in paths:
        top, *rest = path.split(".")
        value: Any = result.get(top)
        for segment in rest[:-1]:
            value = value.get(segment) if isinstance(value, dict) else None
        assert not (isinstance(value, dict) and rest[-1] in value)


# ---- rule errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"drop": True, "when": "x"}], "rules[0]: unknown key when"),
        ([{"drop": True}, {"sample": 5, "smaple_by": "userId"}], "rules[1]: unknown key smaple_by"),
        (
            [{}],
            "rules[0]: a rule needs exactly one of sample, drop, drop_properties, allow_properties; got none",
        ),
        ([{"if": "true"}], "rules[0]: a rule needs exactly one of"),
        (
            [{"drop": True, "sample": 5}],
            "rules[0]: a rule needs exactly one of sample, drop, drop_properties, "
            "allow_properties; got sample and drop",
        ),
        ([{"drop": False}], "rules[0]: drop must be true, got False"),
        ([{"drop": "yes"}], "rules[0]: drop must be true, got 'yes'"),
        ([{"sample": 101}], "rules[0]: sample must be a percentage from 0 to 100, got 101"),
        ([{"sample": -1}], "rules[0]: sample must be a percentage from 0 to 100, got -1"),
        ([{"sample": "50%"}], "rules[0]: sample must be a percentage from 0 to 100, got '50%'"),
        ([{"sample": True}], "rules[0]: sample must be a percentage from 0 to 100, got True"),
        ([{"sample": float("nan")}], "rules[0]: sample must be a percentage from 0 to 100, got nan"),
        ([{"sample": None}], "rules[0]: sample must be a percentage"),
        ([{"drop": True, "sample_by": "userId"}], "rules[0]: sample_by only goes with sample"),
        ([{"sample": 5, "sample_by": ""}], "rules[0]: sample_by: '' is not a field path"),
        ([{"sample": 5, "sample_by": 7}], "rules[0]: sample_by: 7 is not a field path"),
        ([{"sample": 5, "sample_by": "a..b"}], "rules[0]: sample_by: 'a..b' is not a field path"),
        ([{"if": True, "drop": True}], "rules[0]: if must be condition text, got True; leave it out"),
        ([{"if": None, "drop": True}], "rules[0]: if must be condition text, got None"),
        ([{"if": "", "drop": True}], "rules[0]: if: condition is empty at column 1: "),
        ([{"if": "type = ", "drop": True}], 'rules[0]: if: expected a value after "=" at column 8: type = '),
        ([{"drop_properties": "properties.email"}], "rules[0]: drop_properties must be a non-empty list"),
        ([{"drop_properties": []}], "rules[0]: drop_properties must be a non-empty list"),
        ([{"drop_properties": None}], "rules[0]: drop_properties must be a non-empty list"),
        (
            [{"drop_properties": ["properties"]}],
            "rules[0]: drop_properties: 'properties' names a whole top-level",
        ),
        (
            [{"drop_properties": ["userId"]}],
            "rules[0]: drop_properties: 'userId' names a whole top-level field",
        ),
        (
            [{"drop_properties": ["properties..a"]}],
            "rules[0]: drop_properties: 'properties..a' is not a field",
        ),
        (
            [{"drop_properties": ["properties.a."]}],
            "rules[0]: drop_properties: 'properties.a.' is not a field",
        ),
        ([{"drop_properties": [3]}], "rules[0]: drop_properties: 3 is not a field path"),
        (
            [{"allow_properties": ["context.ip"]}],
            "rules[0]: allow_properties: 'context.ip' is not under properties or traits",
        ),
        (
            [{"allow_properties": {"properties": ["a"]}}],
            "rules[0]: allow_properties must be a non-empty list",
        ),
        (["drop"], "rules[0]: a rule must be a mapping, got str"),
        ([{"drop": True}, None], "rules[1]: a rule must be a mapping, got NoneType"),
        ({"drop": True}, "filters: must be a list of rules, got dict"),
        ("drop", "filters: must be a list of rules, got str"),
    ],
)
def test_rule_errors_name_the_rule_and_the_problem(rules: Any, message: str) -> None:
    assert rule_error(rules).startswith(message)


def test_filter_error_is_a_value_error_with_the_index() -> None:
    assert issubclass(FilterError, ValueError)
    with pytest.raises(FilterError) as caught:
        compile_filters([{"drop": True}, {"drop": True}, {"sample": 500}])
    assert caught.value.index == 2


def test_paths_may_hold_spaces_and_odd_characters() -> None:
    event = track(properties={"Order Total": 5, "e-mail": "x", "keep": 1})
    result = kept([{"drop_properties": ["properties.Order Total", "properties.e-mail"]}], event)
    assert result["properties"] == {"keep": 1}
