"""Field mappings: each directive, undefined vs null, compile errors that name their place in
the spec, and a mapper that never raises whatever the event."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.deliver.mapping import MappingError, compile_mapping


def run(spec: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    return compile_mapping(spec)(event)


def compile_error(spec: Any) -> str:
    with pytest.raises(MappingError) as caught:
        compile_mapping(spec)
    return str(caught.value)


EVENT: dict[str, Any] = {
    "type": "identify",
    "userId": "u-42",
    "traits": {
        "first_name": "Ada",
        "email": "ada@example.com",
        "age": 36,
        "score": 9.5,
        "rounded": 3.0,
        "vip": True,
        "nickname": None,
        "empty": "",
        "tags": ["a", "b"],
        "address": {"city": "London", "zip": "N1"},
    },
    "integrations": {"Actions Amplitude": {"session_id": 1700000000000}},
    "context": {"ip": "203.0.113.9"},
}


# ---- @path ------------------------------------------------------------------------------------


def test_path_reads_nested_values_and_the_whole_event() -> None:
    out = run(
        {
            "email": {"@path": "$.traits.email"},
            "city": {"@path": "$.traits.address.city"},
            "traits": {"@path": "$.traits"},
            "everything": {"@path": "$"},
        },
        EVENT,
    )
    assert out["email"] == "ada@example.com"
    assert out["city"] == "London"
    assert out["traits"] == EVENT["traits"]
    assert out["everything"] == EVENT


def test_path_brackets_quotes_and_indexes() -> None:
    out = run(
        {
            "session": {"@path": "$.integrations['Actions Amplitude'].session_id"},
            "session_dq": {"@path": '$.integrations["Actions Amplitude"].session_id'},
            "session_dotted": {"@path": "$.integrations.Actions Amplitude.session_id"},
            "first_tag": {"@path": "$.traits.tags[0]"},
            "second_tag": {"@path": "$.traits.tags.1"},
            "past_end": {"@path": "$.traits.tags[5]"},
        },
        EVENT,
    )
    assert out == {
        "session": 1700000000000,
        "session_dq": 1700000000000,
        "session_dotted": 1700000000000,
        "first_tag": "a",
        "second_tag": "b",
    }


def test_quoted_keys_may_hold_dots_brackets_and_escaped_quotes() -> None:
    event = {"weird": {"a.b": 1, "it's": 2, "[x]": 3}}
    out = run(
        {
            "dot": {"@path": "$.weird['a.b']"},
            "quote": {"@path": "$.weird['it\\'s']"},
            "brackets": {"@path": '$.weird["[x]"]'},
        },
        event,
    )
    assert out == {"dot": 1, "quote": 2, "brackets": 3}


def test_paths_into_missing_or_non_object_values_are_undefined() -> None:
    out = run(
        {
            "missing": {"@path": "$.traits.nope"},
            "through_string": {"@path": "$.traits.email.domain"},
            "through_null": {"@path": "$.traits.nickname.first"},
            "index_into_object": {"@path": "$.traits[0]"},
            "key_into_array": {"@path": "$.traits.tags.first"},
            "kept": 1,
        },
        EVENT,
    )
    assert out == {"kept": 1}


# ---- undefined vs null ------------------------------------------------------------------------


def test_undefined_drops_the_key_but_null_is_kept() -> None:
    out = run(
        {
            "nickname": {"@path": "$.traits.nickname"},
            "missing": {"@path": "$.traits.missing"},
            "literal_null": None,
            "nested": {"gone": {"@path": "$.nope"}, "inner": {"gone": {"@path": "$.nope"}}},
        },
        EVENT,
    )
    assert out == {"nickname": None, "literal_null": None, "nested": {"inner": {}}}


def test_undefined_inside_an_array_becomes_null_keeping_positions() -> None:
    out = run({"ids": [{"@path": "$.userId"}, {"@path": "$.nope"}, "fixed"]}, EVENT)
    assert out == {"ids": ["u-42", None, "fixed"]}


# ---- raw values, nesting, arrays --------------------------------------------------------------


def test_plain_values_are_literals_and_objects_map_recursively() -> None:
    spec = {
        "library": "headwater",
        "n": 3,
        "on": False,
        "list": [1, "two", None],
        "user": {"id": {"@path": "$.userId"}, "profile": {"city": {"@path": "$.traits.address.city"}}},
    }
    assert run(spec, EVENT) == {
        "library": "headwater",
        "n": 3,
        "on": False,
        "list": [1, "two", None],
        "user": {"id": "u-42", "profile": {"city": "London"}},
    }


def test_arrays_of_directives_evaluate_element_wise_and_nest() -> None:
    spec = {
        "pairs": [
            [{"@path": "$.userId"}, {"@template": "{{traits.first_name}}!"}],
            {"k": {"@path": "$.type"}},
        ]
    }
    assert run(spec, EVENT) == {"pairs": [["u-42", "Ada!"], {"k": "identify"}]}


def test_empty_spec_gives_an_empty_object() -> None:
    assert run({}, EVENT) == {}


def test_top_level_directive_yields_an_object_or_nothing() -> None:
    assert run({"@path": "$.traits.address"}, EVENT) == {"city": "London", "zip": "N1"}
    assert run({"@path": "$.userId"}, EVENT) == {}
    assert run({"@path": "$.nope"}, EVENT) == {}


def test_output_is_a_fresh_copy_of_event_and_spec() -> None:
    event = copy.deepcopy(EVENT)
    spec: dict[str, Any] = {"traits": {"@path": "$.traits"}, "fixed": {"@literal": {"a": [1]}}, "raw": [1, 2]}
    mapper = compile_mapping(spec)
    first = mapper(event)
    first["traits"]["address"]["city"] = "Paris"
    first["traits"]["tags"].append("c")
    first["fixed"]["a"].append(2)
    first["raw"].append(3)
    assert event == EVENT
    assert mapper(event) == {"traits": EVENT["traits"], "fixed": {"a": [1]}, "raw": [1, 2]}


# ---- @literal ---------------------------------------------------------------------------------


def test_literal_returns_values_as_is_even_directive_lookalikes() -> None:
    spec = {
        "flag": {"@literal": True},
        "looks_like_path": {"@literal": {"@path": "$.userId"}},
        "deep": {"@literal": [{"@template": "{{userId}}"}, {"@foo": 1}]},
        "null": {"@literal": None},
        "empty": {"@literal": ""},
    }
    assert run(spec, EVENT) == {
        "flag": True,
        "looks_like_path": {"@path": "$.userId"},
        "deep": [{"@template": "{{userId}}"}, {"@foo": 1}],
        "null": None,
        "empty": "",
    }


# ---- @template --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {{traits.first_name}} ({{userId}})", "Hi Ada (u-42)"),
        ("[{{traits.missing}}]", "[]"),
        ("[{{nope.deeper.still}}]", "[]"),
        ("[{{traits.nickname}}]", "[]"),
        ("{{traits.age}}/{{traits.score}}/{{traits.rounded}}", "36/9.5/3"),
        ("{{traits.vip}}", "true"),
        ("{{traits.address.city}}, {{ traits.address.zip }}", "London, N1"),
        ("{{userId}}-{{userId}}-{{userId}}", "u-42-u-42-u-42"),
        ("{{traits.tags}}", '["a","b"]'),
        ("{{traits.address}}", '{"city":"London","zip":"N1"}'),
        ("{{traits.tags[1]}} {{traits.tags.0}}", "b a"),
        ("{{integrations['Actions Amplitude'].session_id}}", "1700000000000"),
        ("{{{traits.first_name}}}", "Ada"),
        ("no placeholders", "no placeholders"),
        ("", ""),
        ("stray {{ brace", "stray {{ brace"),
        ("{{userId}}}", "u-42}"),
    ],
)
def test_template_rendering(template: str, expected: str) -> None:
    assert run({"t": {"@template": template}}, EVENT) == {"t": expected}


def test_template_renders_floats_and_unicode_plainly() -> None:
    event = {"a": 0.1, "b": 1e21, "c": -2.0, "d": {"name": "Zoë"}, "e": False}
    out = run({"t": {"@template": "{{a}} {{b}} {{c}} {{d}} {{e}}"}}, event)
    assert out == {"t": '0.1 1e+21 -2 {"name":"Zoë"} false'}


# ---- @if --------------------------------------------------------------------------------------


def _if(test: str, path: str, **branches: Any) -> dict[str, Any]:
    return {"@if": {test: {"@path": path}, **branches}}


@pytest.mark.parametrize(
    ("path", "exists", "not_blank"),
    [
        ("$.traits.email", True, True),
        ("$.traits.missing", False, False),
        ("$.traits.nickname", False, False),  # null
        ("$.traits.empty", True, False),  # ""
        ("$.traits.vip", True, True),
        ("$.traits.tags", True, True),
    ],
)
def test_if_exists_and_blank(path: str, exists: bool, not_blank: bool) -> None:
    spec = {
        "exists": _if("exists", path, then="then", **{"else": "else"}),
        "blank": _if("blank", path, then="then", **{"else": "else"}),
    }
    out = run(spec, EVENT)
    assert out["exists"] == ("then" if exists else "else")
    # Segment's mapping-kit takes `then` when the value is NOT blank.
    assert out["blank"] == ("then" if not_blank else "else")


def test_if_without_else_drops_the_field() -> None:
    spec = {
        "vip": _if("exists", "$.traits.missing", then=True),
        "has_email": _if("exists", "$.traits.email", then=True),
        "email": _if("blank", "$.traits.empty", then={"@path": "$.traits.empty"}),
    }
    assert run(spec, EVENT) == {"has_email": True}


def test_if_branches_and_conditions_may_be_any_mapping_value() -> None:
    spec = {
        "who": {
            "@if": {
                "exists": {"@template": "{{traits.missing}}"},  # "" exists
                "then": {"name": {"@path": "$.traits.first_name"}, "ids": [{"@path": "$.userId"}]},
                "else": None,
            }
        },
        "fallback": {"@if": {"exists": {"@path": "$.nope"}, "then": 1, "else": {"@path": "$.traits.email"}}},
        "false_else": {"@if": {"exists": {"@path": "$.nope"}, "then": 1, "else": False}},
        "raw_condition": {"@if": {"exists": None, "then": 1, "else": 0}},
    }
    assert run(spec, EVENT) == {
        "who": {"name": "Ada", "ids": ["u-42"]},
        "fallback": "ada@example.com",
        "false_else": False,
        "raw_condition": 0,
    }


# ---- @arrayPath -------------------------------------------------------------------------------

ORDER: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "properties": {
        "order_id": "o-1",
        "products": [
            {"product_id": "p-1", "quantity": 2, "price": 9.99, "name": "Mug"},
            {"product_id": "p-2", "price": 5, "name": "Tea"},
        ],
        "single": {"product_id": "p-9", "quantity": 1},
        "sku": "ABC",
        "nothing": None,
    },
}


def test_array_path_maps_each_item_with_relative_paths() -> None:
    spec = {
        "items": {
            "@arrayPath": [
                "$.properties.products",
                {
                    "id": {"@path": "$.product_id"},
                    "qty": {"@path": "$.quantity"},
                    "label": {"@template": "{{name}} x{{quantity}}"},
                    "whole": {"@path": "$"},
                    "order": {"@path": "$.properties.order_id"},  # relative to the item: undefined
                },
            ]
        }
    }
    products = ORDER["properties"]["products"]
    assert run(spec, ORDER) == {
        "items": [
            {"id": "p-1", "qty": 2, "label": "Mug x2", "whole": products[0]},
            {"id": "p-2", "label": "Tea x", "whole": products[1]},
        ]
    }


def test_array_path_without_a_shape_returns_the_array() -> None:
    assert run({"p": {"@arrayPath": ["$.properties.products"]}}, ORDER) == {
        "p": ORDER["properties"]["products"]
    }
    assert run({"p": {"@arrayPath": ["$.properties.products", {}]}}, ORDER) == {
        "p": ORDER["properties"]["products"]
    }


def test_array_path_coerces_a_single_value_to_one_element() -> None:
    shape = {"id": {"@path": "$.product_id"}}
    out = run(
        {
            "obj": {"@arrayPath": ["$.properties.single", shape]},
            "scalar": {"@arrayPath": ["$.properties.sku", {"sku": {"@path": "$"}}]},
            "bare": {"@arrayPath": ["$.properties.sku"]},
        },
        ORDER,
    )
    assert out == {"obj": [{"id": "p-9"}], "scalar": [{"sku": "ABC"}], "bare": ["ABC"]}


def test_array_path_missing_is_undefined_and_null_is_kept() -> None:
    shape = {"id": {"@path": "$.product_id"}}
    out = run(
        {
            "missing": {"@arrayPath": ["$.properties.nope", shape]},
            "null": {"@arrayPath": ["$.properties.nothing", shape]},
            "empty": {"@arrayPath": ["$.properties.empty_list", shape]},
        },
        {**ORDER, "properties": {**ORDER["properties"], "empty_list": []}},
    )
    assert out == {"null": None, "empty": []}


def test_array_path_item_shape_may_be_a_directive_and_source_may_be_one() -> None:
    spec = {
        "ids": {"@arrayPath": ["$.properties.products", {"@path": "$.quantity"}]},
        "names": {
            "@arrayPath": [
                {
                    "@if": {
                        "exists": {"@path": "$.properties.products"},
                        "then": {"@path": "$.properties.products"},
                    }
                },
                {"n": {"@path": "$.name"}},
            ]
        },
    }
    assert run(spec, ORDER) == {"ids": [2, None], "names": [{"n": "Mug"}, {"n": "Tea"}]}


def test_nested_array_paths_are_relative_to_their_own_items() -> None:
    event = {"orders": [{"id": 1, "lines": [{"sku": "a"}, {"sku": "b"}]}, {"id": 2, "lines": {"sku": "c"}}]}
    spec = {
        "orders": {
            "@arrayPath": [
                "$.orders",
                {"id": {"@path": "$.id"}, "skus": {"@arrayPath": ["$.lines", {"@path": "$.sku"}]}},
            ]
        }
    }
    assert run(spec, event) == {"orders": [{"id": 1, "skus": ["a", "b"]}, {"id": 2, "skus": ["c"]}]}


# ---- a realistic action -----------------------------------------------------------------------


def test_order_completed_to_an_amplitude_like_purchase() -> None:
    event = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-123",
        "userId": "u-7",
        "anonymousId": "anon-7",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "context": {
            "ip": "198.51.100.4",
            "device": {"type": "ios"},
            "os": {"name": "iOS", "version": "17.4"},
        },
        "properties": {
            "order_id": "50314b8e",
            "total": 27.5,
            "revenue": 25.0,
            "currency": "USD",
            "coupon": None,
            "products": [
                {"product_id": "507f1f77", "sku": "45790-32", "name": "Monopoly", "price": 19, "quantity": 1},
                {"product_id": "505bd76", "sku": "46493-32", "name": "Uno", "price": 3, "quantity": 2},
            ],
        },
    }
    spec = {
        "event_type": {"@path": "$.event"},
        "user_id": {"@path": "$.userId"},
        "device_id": {
            "@if": {
                "exists": {"@path": "$.context.device.id"},
                "then": {"@path": "$.context.device.id"},
                "else": {"@path": "$.anonymousId"},
            }
        },
        "insert_id": {"@path": "$.messageId"},
        "time": {"@path": "$.timestamp"},
        "ip": {"@path": "$.context.ip"},
        "os_name": {"@path": "$.context.os.name"},
        "os_version": {"@path": "$.context.os.version"},
        "carrier": {"@path": "$.context.network.carrier"},
        "revenue": {"@path": "$.properties.revenue"},
        "event_properties": {
            "order_id": {"@path": "$.properties.order_id"},
            "coupon": {"@path": "$.properties.coupon"},
            "summary": {
                "@template": "Order {{properties.order_id}}: {{properties.total}} {{properties.currency}}"
            },
        },
        "products": {
            "@arrayPath": [
                "$.properties.products",
                {
                    "productId": {"@path": "$.product_id"},
                    "price": {"@path": "$.price"},
                    "quantity": {"@path": "$.quantity"},
                    "title": {"@template": "{{name}} ({{sku}})"},
                },
            ]
        },
        "library": "headwater",
    }
    assert run(spec, event) == {
        "event_type": "Order Completed",
        "user_id": "u-7",
        "device_id": "anon-7",
        "insert_id": "m-123",
        "time": "2024-05-01T12:00:00.000Z",
        "ip": "198.51.100.4",
        "os_name": "iOS",
        "os_version": "17.4",
        "revenue": 25.0,
        "event_properties": {"order_id": "50314b8e", "coupon": None, "summary": "Order 50314b8e: 27.5 USD"},
        "products": [
            {"productId": "507f1f77", "price": 19, "quantity": 1, "title": "Monopoly (45790-32)"},
            {"productId": "505bd76", "price": 3, "quantity": 2, "title": "Uno (46493-32)"},
        ],
        "library": "headwater",
    }


def test_slack_webhook_style_text() -> None:
    spec = {
        "text": {"@template": "*{{event}}* by {{userId}} — {{properties.total}}"},
        "username": "Headwater",
    }
    event = {"event": "Order Completed", "userId": "u-7", "properties": {"total": 27.5}}
    assert run(spec, event) == {"text": "*Order Completed* by u-7 — 27.5", "username": "Headwater"}


# ---- compile errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "location", "says"),
    [
        ({"user": {"email": {"@path": 5}}}, "$.user.email", '@path needs a string like "$.traits.email"'),
        ({"user": {"email": {"@path": "traits.email"}}}, "$.user.email", "@path needs a string"),
        ({"e": {"@path": "$.traits..email"}}, "$.e", "bad path '$.traits..email'"),
        ({"e": {"@path": "$.tags[x]"}}, "$.e", "bad path"),
        ({"e": {"@path": "$.tags['open"}}, "$.e", "bad path"),
        ({"x": [1, {"@foo": "bar"}]}, "$.x[1]", "unknown directive @foo"),
        ({"x": {"@path": "$.a", "@template": "b"}}, "$.x", "one directive per object"),
        ({"x": {"@path": "$.a", "other": 1}}, "$.x", "must be the only key"),
        ({"t": {"@template": 3}}, "$.t", "@template needs a string"),
        ({"t": {"@template": "{{ }}"}}, "$.t", "bad placeholder"),
        ({"t": {"@template": "{{a..b}}"}}, "$.t", "bad placeholder"),
        ({"c": {"@if": {"exists": {"@path": "$.a"}, "else": 1}}}, "$.c", '@if needs a "then" value'),
        ({"c": {"@if": {"then": 1}}}, "$.c", 'exactly one of "exists" or "blank"'),
        ({"c": {"@if": {"exists": 1, "blank": 1, "then": 1}}}, "$.c", 'exactly one of "exists" or "blank"'),
        ({"c": {"@if": {"exists": 1, "then": 1, "than": 2}}}, "$.c", "unknown key 'than'"),
        ({"c": {"@if": "yes"}}, "$.c", "@if needs an object"),
        ({"c": {"@if": {"exists": 1, "then": {"@nope": 1}}}}, "$.c.@if.then", "unknown directive @nope"),
        ({"a": {"@arrayPath": "$.products"}}, "$.a", "@arrayPath needs"),
        ({"a": {"@arrayPath": []}}, "$.a", "@arrayPath needs"),
        ({"a": {"@arrayPath": ["$.p", {}, {}]}}, "$.a", "@arrayPath needs"),
        ({"a": {"@arrayPath": ["products"]}}, "$.a.@arrayPath[0]", "@arrayPath needs a string"),
        ({"a": {"@arrayPath": ["$.p", "id"]}}, "$.a.@arrayPath[1]", "item mapping must be an object"),
        ({"a": {"@arrayPath": ["$.p", {"id": {"@path": "id"}}]}}, "$.a.@arrayPath[1].id", "@path needs"),
        ({"my key": {"@literal": {1: "x"}}}, "$['my key'].@literal", "object keys must be strings"),
        ({"when": {"day": object()}}, "$.when.day", "not a JSON value"),
    ],
)
def test_compile_errors_name_their_location(spec: Any, location: str, says: str) -> None:
    message = compile_error(spec)
    assert message.startswith(f"at {location}: "), message
    assert says in message, message


def test_mapping_error_is_a_value_error_with_parts() -> None:
    with pytest.raises(ValueError) as caught:
        compile_mapping({"user": {"email": {"@path": 5}}})
    error = caught.value
    assert isinstance(error, MappingError)
    assert (error.location, str(error)) == (
        "$.user.email",
        'at $.user.email: @path needs a string like "$.traits.email", got a number',
    )


def test_a_spec_that_is_not_an_object_is_rejected() -> None:
    assert compile_error(["a"]).startswith("at $: a mapping must be an object")


def test_unknown_directive_message_lists_the_known_ones() -> None:
    message = compile_error({"x": {"@foo": 1}})
    assert re.search(r"known: .*@path.*@arrayPath", message), message


# ---- never raises -----------------------------------------------------------------------------


def json_like(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    return st.recursive(
        scalars | st.sampled_from(["", "a", "b", "0", "1", "Order Completed"]),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=30,
    )


event_keys = st.sampled_from(["a", "b", "0", "1", "x y", "", "@path"]) | st.text(max_size=3)
json_values = json_like(event_keys)
# Raw values inside a spec: keys starting with "@" would be (mostly invalid) directives.
raw_values = json_like(event_keys.filter(lambda key: not key.startswith("@")))
events = st.dictionaries(
    st.sampled_from(["a", "b", "properties", "traits"]) | st.text(max_size=3), json_values
)

paths = st.lists(
    st.sampled_from([".a", ".b", ".0", "[0]", "[1]", "['x y']", ".properties", ".traits"]), max_size=4
).map(lambda steps: "$" + "".join(steps))
placeholders = st.sampled_from(
    ["{{a}}", "{{a.b}}", "{{ properties.0 }}", "{{traits[1]}}", "{{['x y']}}", "{{{b}}}"]
)


def mapping_values(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        raw_values,
        paths.map(lambda p: {"@path": p}),
        st.lists(placeholders | st.text(max_size=3), max_size=3).map(
            lambda parts: {"@template": " ".join(parts)}
        ),
        json_values.map(lambda v: {"@literal": v}),
    )
    if depth == 0:
        return leaf
    inner = mapping_values(depth - 1)
    return st.one_of(
        leaf,
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["k", "l", "m"]), inner, max_size=3),
        st.builds(
            lambda test, cond, then, other: {"@if": {test: cond, "then": then, **other}},
            st.sampled_from(["exists", "blank"]),
            inner,
            inner,
            st.just({}) | inner.map(lambda v: {"else": v}),
        ),
        st.builds(
            lambda p, shape: {"@arrayPath": [p, *shape]}, paths, st.just([]) | inner.map(lambda v: [{"s": v}])
        ),
    )


specs = st.dictionaries(st.sampled_from(["one", "two", "three"]), mapping_values(2), max_size=3)


def assert_plain_json(value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            assert isinstance(key, str)
            assert_plain_json(child)
    elif isinstance(value, list):
        for child in value:
            assert_plain_json(child)
    else:
        assert value is None or isinstance(value, str | int | float | bool), repr(value)


@settings(max_examples=400, deadline=None)
@given(spec=specs, event=events)
def test_evaluation_never_raises_and_yields_plain_json(spec: dict[str, Any], event: dict[str, Any]) -> None:
    snapshot = json.dumps(event, sort_keys=True)
    out = compile_mapping(spec)(event)
    assert isinstance(out, dict)
    assert_plain_json(out)
    json.dumps(out)
    assert json.dumps(event, sort_keys=True) == snapshot


@settings(max_examples=200, deadline=None)
@given(event=events)
def test_a_mapping_of_every_directive_never_raises(event: dict[str, Any]) -> None:
    mapper = compile_mapping(
        {
            "p": {"@path": "$.properties.a[0].b"},
            "t": {"@template": "{{a}} {{properties}} {{traits.0}} {{{b}}}"},
            "i": {"@if": {"blank": {"@path": "$.a"}, "then": {"@path": "$.b"}}},
            "ap": {"@arrayPath": ["$.properties", {"x": {"@path": "$.a"}, "y": {"@template": "{{b}}"}}]},
            "l": {"@literal": {"@path": "$"}},
        }
    )
    out = mapper(event)
    assert out["l"] == {"@path": "$"}
    assert isinstance(out.get("t"), str)


def test_deeply_nested_events_do_not_raise() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = {"a": [deep]}
    out = run({"all": {"@path": "$.a"}, "t": {"@template": "{{a}}"}}, {"a": deep})
    assert out["t"] == ""  # too deep to render as JSON: empty, not an exception
    copied, original = out["all"], deep
    while copied != "bottom":  # walk it: == on 10,000 levels would itself recurse too deep
        assert copied is not original
        copied, original = copied["a"][0], original["a"][0]
