"""The trigger / filter condition language: operators, functions, undefined and null, errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.deliver.conditions import Condition, ConditionError, compile_condition

EVENT: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "user-1",
    "messageId": "m-1",
    "properties": {
        "total": 42,
        "tax": 4.2,
        "currency": "EUR",
        "coupon": None,
        "gift": False,
        "note": "",
        "tags": ["sale", "summer", 7, None],
        "products": [{"sku": "A-1", "price": 10.5}, {"sku": "B-2", "price": 31.5}],
        "count_as_text": "42",
    },
    "context": {"page": {"url": "https://shop.example/checkout?step=2"}, "library": {"version": "1.0"}},
    "traits": {"email": "ana@example.com"},
}


def holds(text: str, event: dict[str, Any] | None = None) -> bool:
    return compile_condition(text)(EVENT if event is None else event)


def error(text: str) -> ConditionError:
    with pytest.raises(ConditionError) as caught:
        compile_condition(text)
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('type = "track"', True),
        ('type = "identify"', False),
        ('type != "identify"', True),
        ('type != "track"', False),
        ("properties.total = 42", True),
        ("properties.total != 42", False),
        ("properties.total < 43", True),
        ("properties.total < 42", False),
        ("properties.total <= 42", True),
        ("properties.total <= 41", False),
        ("properties.total > 41", True),
        ("properties.total > 42", False),
        ("properties.total >= 42", True),
        ("properties.total >= 43", False),
        ('event = "Order Completed"', True),
        ('event = "order completed"', False),
        ('event = "Order"', False),
        ('context.page.url = "https://shop.example/checkout?step=2"', True),
        ('traits.email = "ana@example.com"', True),
        ("properties.gift = false", True),
        ("properties.gift = true", False),
        ("properties.gift != true", True),
    ],
)
def test_comparisons(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("properties.total = 42.0", True),
        ("properties.tax = 4.2", True),
        ("properties.tax > 4", True),
        ("properties.tax < 4.25", True),
        ("properties.total > 41.99", True),
        ("properties.total < 1e3", True),
        ("properties.total = 4.2e1", True),
        ("-3 < -2.5", True),
        ("0 = -0", True),
        ("properties.total > -1", True),
        ("123456789012345678901234567890 > 1.0", True),
    ],
)
def test_numbers_compare_numerically_across_int_and_float(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"b" > "a"', True),
        ('"abc" < "abd"', True),
        ('"B" < "a"', True),
        ('"" < "a"', True),
        ('properties.currency >= "EUR"', True),
        ('properties.currency > "EUR"', False),
        ('properties.currency < "eur"', True),
        ('properties.currency = "EUR "', False),
    ],
)
def test_strings_compare_lexicographically_and_equal_exactly(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("properties.count_as_text = 42", False),
        ("properties.count_as_text != 42", True),
        ('properties.total = "42"', False),
        ('properties.total > "41"', False),
        ('properties.total < "43"', False),
        ("properties.count_as_text > 41", False),
        ("properties.gift = 0", False),
        ("properties.gift < 1", False),
        ("true = 1", False),
        ("1 = true", False),
        ("true > false", False),
        ("properties.coupon < 1", False),
        ("properties.coupon >= 0", False),
        ("properties.missing < 1", False),
        ("properties.missing > 1", False),
        ("properties.products > 1", False),
        ('properties.products = "A-1"', False),
        ("properties.note = false", False),
        ("properties.note = null", False),
    ],
)
def test_mismatched_types_are_never_equal_nor_ordered(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("properties.missing = null", True),
        ("properties.coupon = null", True),
        ("properties.total = null", False),
        ("properties.gift = null", False),
        ("properties.missing != null", False),
        ("properties.coupon != null", False),
        ("properties.total != null", True),
        ("properties.gift != null", True),
        ("properties.note != null", True),
        ('properties.missing = ""', False),
        ('properties.missing != "x"', True),
        ("nowhere.at.all = null", True),
        ("properties.total.deeper = null", True),
        ("properties.currency.length = null", True),
        ("null = null", True),
    ],
)
def test_missing_fields_are_undefined_and_equal_null(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('properties.products.0.sku = "A-1"', True),
        ("properties.products.1.price = 31.5", True),
        ("properties.products.2.sku = null", True),
        ('properties.tags.0 = "sale"', True),
        ("properties.products.price = null", True),
    ],
)
def test_numeric_segments_index_arrays(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_fields_compare_with_fields() -> None:
    event = {"a": 1, "b": 1.0, "c": "1", "d": {"x": [1, 2]}, "e": {"x": [1, 2]}}
    assert holds("a = b", event)
    assert not holds("a = c", event)
    assert holds("a <= b", event)
    assert holds("d = e", event)
    assert holds("missing = alsomissing", event)
    assert not holds("a = d", event)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("false and true or true", True),
        ("false and (true or true)", False),
        ('type = "page" or type = "track" and event = "Order Completed"', True),
        ('type = "page" or type = "track" and event = "Nope"', False),
        ('(type = "page" or type = "track") and event = "Order Completed"', True),
        ('type = "track" and (event = "Nope" or properties.total > 40)', True),
        ("((((true))))", True),
        ("true and true and true and false", False),
        ("false or false or false or true", True),
    ],
)
def test_and_binds_tighter_than_or_and_parentheses_group(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!true", False),
        ("not true", False),
        ("!!true", True),
        ("not not true", True),
        ("! not true", True),
        ('!type = "track"', False),
        ('not type = "track"', False),
        ('!(type = "track")', False),
        ("not false and false", False),
        ("not (false and false)", True),
        ("!false or false", True),
        ('not contains(event, "Order")', False),
        ("!properties.total exists", False),
        ("not properties.missing exists", True),
        ("!exists(properties.missing)", True),
    ],
)
def test_negation_binds_to_the_nearest_term(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        'TYPE = "track"',
        'type = "track" AND event = "Order Completed"',
        'type = "x" Or TRUE',
        "NOT FALSE",
        "properties.coupon = NULL",
        "properties.total EXISTS",
        "Exists(properties.total)",
        'CONTAINS(event, "Order")',
        'Match(event, "Order*")',
    ],
)
def test_keywords_are_case_insensitive(text: str) -> None:
    assert holds(text.replace("TYPE", "type")) is True


def test_field_paths_are_case_sensitive() -> None:
    assert holds("Type = null")
    assert holds("Properties.total = null")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('contains(event, "Order")', True),
        ('contains(event, "order")', False),
        ('contains(event, "")', True),
        ('contains(event, "Order Completed")', True),
        ('contains(event, "Order Completed!")', False),
        ('contains(context.page.url, "/checkout")', True),
        ('contains(properties.tags, "sale")', True),
        ('contains(properties.tags, "sal")', False),
        ("contains(properties.tags, 7)", True),
        ("contains(properties.tags, 7.0)", True),
        ("contains(properties.tags, null)", True),
        ('contains(properties.tags, "7")', False),
        ("contains(properties.total, 4)", False),
        ('contains(properties.count_as_text, "4")', True),
        ("contains(properties.count_as_text, 4)", False),
        ('contains(properties.missing, "x")', False),
        ('contains(properties.products, "A-1")', False),
        ('contains(properties, "total")', False),
        ('contains("hello world", "o w")', True),
    ],
)
def test_contains_is_substring_for_strings_and_membership_for_arrays(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_contains_does_not_treat_bools_as_numbers() -> None:
    assert not holds("contains(flags, 1)", {"flags": [True]})
    assert not holds("contains(flags, true)", {"flags": [1]})
    assert holds("contains(flags, true)", {"flags": [False, True]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('match(event, "Order*")', True),
        ('match(event, "*Completed")', True),
        ('match(event, "*der Comp*")', True),
        ('match(event, "Order")', False),
        ('match(event, "order*")', False),
        ('match(event, "Order Complete?")', True),
        ('match(event, "Order Complete??")', False),
        ('match(event, "????? *")', True),
        ('match(event, "*")', True),
        ('match(event, "***")', True),
        ('match(event, "Order Completed")', True),
        ('match(context.page.url, "https://*.example/*?step=?")', True),
        ('match(context.library.version, "1.*")', True),
        ('match(context.library.version, "2.*")', False),
        ('match(context.library.version, "1?0")', True),
        ('match(properties.total, "4*")', False),
        ('match(properties.missing, "*")', False),
        ('match(properties.coupon, "*")', False),
    ],
)
def test_match_is_a_case_sensitive_whole_string_glob(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("a.c", "a.c", True),
        ("abc", "a.c", False),
        ("a+b", "a+b", True),
        ("aab", "a+b", False),
        ("[x]", "[x]", True),
        ("x", "[x]", False),
        ("a^$b", "a^$b", True),
        ("a\\b", "a\\\\b", True),
        ("line one\nline two", "line*two", True),
        ("", "*", True),
        ("", "?", False),
        ("é", "?", True),
    ],
)
def test_match_treats_everything_but_star_and_question_mark_literally(
    value: str, pattern: str, expected: bool
) -> None:
    assert compile_condition(f'match(v, "{pattern}")')({"v": value}) is expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("properties.total", True),
        ("properties.gift", True),
        ("properties.note", True),
        ("properties.tags", True),
        ("properties.coupon", False),
        ("properties.missing", False),
        ("properties.total.deeper", False),
        ("type", True),
    ],
)
def test_exists_means_present_and_not_null(field: str, expected: bool) -> None:
    assert holds(f"exists({field})") is expected
    assert holds(f"{field} exists") is expected
    assert holds(f"not {field} exists") is not expected


def test_exists_combines_with_other_terms() -> None:
    assert holds('type = "track" and traits.email exists and properties.total > 1')
    assert holds("properties.missing exists or properties.total exists")


def test_exists_can_also_be_a_field_name_and_so_can_function_names() -> None:
    event = {"exists": 1, "contains": "x", "match": True}
    assert holds("exists = 1", event)
    assert holds('contains = "x"', event)
    assert holds("match = true", event)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"a\/b"', "a/b"),
        (r'"tab\there"', "tab\there"),
        (r'"new\nline"', "new\nline"),
        (r'"\r\b\f"', "\r\b\f"),
        (r'"caf\u00e9"', "café"),
        (r'"\u00E9"', "é"),
        (r'"it\'s"', "it's"),
        ('"café"', "café"),
        ('"a = b and c"', "a = b and c"),
        ('"(not) or, !"', "(not) or, !"),
        ('""', ""),
        ("'single'", "single"),
        (r"'say \'hi\''", "say 'hi'"),
        ("'with \"double\" inside'", 'with "double" inside'),
    ],
)
def test_string_literals_and_escapes(literal: str, value: str) -> None:
    assert compile_condition(f"v = {literal}")({"v": value})
    assert not compile_condition(f"v = {literal}")({"v": value + "x"})


@pytest.mark.parametrize(
    ("text", "problem", "column"),
    [
        ("type = ", 'expected a value after "="', 8),
        ('type = "track" and', 'expected a value after "and"', 19),
        ('type = "track" and event =', 'expected a value after "="', 27),
        ("type", 'expected a comparison such as "=" or "exists" after a field', 5),
        ("42", 'expected a comparison such as "=" or "exists" after a value', 3),
        ('"track"', 'expected a comparison such as "=" or "exists" after a value', 8),
        ("type = = 1", 'expected a value after "=", found "="', 8),
        ('= "track"', 'expected a value, found "="', 1),
        ('type == "track"', 'use "=" instead of "=="', 6),
        ("a = 1 && b = 2", 'use "and" instead of "&&"', 7),
        ("a = 1 || b = 2", 'use "or" instead of "||"', 7),
        ('type = "track" event = "x"', 'expected "and" or "or" before "event"', 16),
        ('type = "track" "x"', 'expected "and" or "or" before "x"', 16),
        ("(a = 1", 'unclosed "("', 1),
        ("((a = 1)", 'unclosed "("', 1),
        ("(a = 1 b = 2)", 'expected "and", "or" or ")" before "b"', 8),
        ("a = 1)", 'unmatched ")"', 6),
        ("()", 'expected a value after "(", found ")"', 2),
        ('type = "track', "unterminated string", 8),
        ("type = 'track", "unterminated string", 8),
        ('type = "tr\\"', "unterminated string", 8),
        ('type = "\\q"', 'unknown escape "\\q" in string', 9),
        ('type = "ok\\u12"', 'unknown escape "\\u" in string', 11),
        ("type = 5x", "malformed number", 8),
        ("type = 1.2.3", "malformed number", 8),
        ("type = 1.", "malformed number", 8),
        ("type = #", "unexpected character '#'", 8),
        ("type = -", "unexpected character '-'", 8),
        ("properties. = 1", "unexpected character '.'", 11),
        ("a = 1 and", 'expected a value after "and"', 10),
        ("not", 'expected a value after "not"', 4),
        ("!", 'expected a value after "!"', 2),
        ("true and not", 'expected a value after "not"', 13),
        ("a = and", 'expected a value after "=", found "and"', 5),
        ("contains(event)", "contains() takes 2 arguments, got 1", 1),
        ('contains(event, "a", "b")', "contains() takes 2 arguments, got 3", 1),
        ("exists(a, b)", "exists() takes 1 argument, got 2", 1),
        ("exists(1)", "exists() needs a field", 8),
        ('exists("a")', "exists() needs a field", 8),
        ("match(event, pattern)", "match() needs a string pattern as its second argument", 14),
        ("match(event, 5)", "match() needs a string pattern as its second argument", 14),
        ('contains(event "a")', 'expected "," or ")" in contains()', 16),
        ("contains(", 'expected a value after "("', 10),
        ("contains()", 'expected a value after "(", found ")"', 10),
        ("1 exists", 'expected a comparison such as "=" or "exists" after a value', 3),
        ("", "condition is empty", 1),
        ("   ", "condition is empty", 4),
        ("\n\t", "condition is empty", 3),
    ],
)
def test_syntax_errors_say_what_and_where(text: str, problem: str, column: int) -> None:
    caught = error(text)
    assert caught.problem == problem
    assert caught.column == column
    assert str(caught) == f"{problem} at column {column}: {text}"


def test_condition_error_is_a_value_error() -> None:
    assert issubclass(ConditionError, ValueError)


def test_nesting_is_bounded_at_compile_time() -> None:
    assert holds("(" * 64 + "true" + ")" * 64)
    assert holds("!" * 64 + "true")
    assert "nested more than 64 deep" in str(error("(" * 65 + "true" + ")" * 65))
    assert "nested more than 64 deep" in str(error("not " * 65 + "true"))


def test_long_flat_chains_compile_and_evaluate() -> None:
    many_ors = " or ".join(f'event = "e{i}"' for i in range(2000))
    assert compile_condition(many_ors)({"event": "e1999"})
    many_ands = " and ".join("true" for _ in range(2000))
    assert compile_condition(many_ands)({})


def test_a_compiled_condition_is_reusable_and_does_not_mutate_events() -> None:
    condition = compile_condition('type = "track" and contains(properties.tags, "sale")')
    before = copy.deepcopy(EVENT)
    assert [condition(EVENT) for _ in range(3)] == [True, True, True]
    assert not condition({"type": "track"})
    assert condition(EVENT)
    assert before == EVENT


def test_events_may_be_any_mapping() -> None:
    from types import MappingProxyType

    event = MappingProxyType({"properties": MappingProxyType({"total": 5})})
    assert compile_condition("properties.total = 5")(event)


# ---- properties --------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["type", "a", "a.b", "a.b.c", "a.0", "a.0.b", "properties.total", "properties.tags.1"]
events = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values,
        "a": json_values,
        "properties": st.fixed_dictionaries({}, optional={"total": json_values, "tags": json_values}),
    },
)
LITERALS = ['"x"', '""', "0", "1.5", "-2", "true", "false", "null", "a.b"]


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> str:
    field = draw(st.sampled_from(FIELDS))
    literal = draw(st.sampled_from(LITERALS))
    leaves = [
        f"{field} {draw(st.sampled_from(['=', '!=', '<', '<=', '>', '>=']))} {literal}",
        f"contains({field}, {literal})",
        f'match({field}, "{draw(st.sampled_from(["*", "?", "a*", "*1*", ""]))}")',
        f"exists({field})",
        f"{field} exists",
    ]
    leaf = draw(st.sampled_from(leaves))
    if depth >= 3 or draw(st.booleans()):
        return leaf
    joiner = draw(st.sampled_from(["and", "or"]))
    other = draw(conditions(depth + 1))
    wrapped = f"({leaf} {joiner} {other})"
    return f"!{wrapped}" if draw(st.booleans()) else wrapped


@settings(max_examples=400)
@given(conditions(), events)
def test_evaluation_never_raises_and_returns_a_bool(text: str, event: dict[str, Any]) -> None:
    result = compile_condition(text)(event)
    assert type(result) is bool


@settings(max_examples=200)
@given(conditions(), events)
def test_not_negates_and_parentheses_change_nothing(text: str, event: dict[str, Any]) -> None:
    condition: Condition = compile_condition(text)
    assert compile_condition(f"!({text})")(event) is (not condition(event))
    assert compile_condition(f"not ({text})")(event) is (not condition(event))
    assert compile_condition(f"(({text}))")(event) is condition(event)


@settings(max_examples=200)
@given(conditions(), conditions(), events)
def test_and_or_follow_boolean_logic(left: str, right: str, event: dict[str, Any]) -> None:
    a, b = compile_condition(left)(event), compile_condition(right)(event)
    assert compile_condition(f"({left}) and ({right})")(event) is (a and b)
    assert compile_condition(f"({left}) or ({right})")(event) is (a or b)


@settings(max_examples=200)
@given(st.sampled_from(FIELDS), events)
def test_null_equality_is_the_opposite_of_exists(field: str, event: dict[str, Any]) -> None:
    assert compile_condition(f"{field} = null")(event) is not compile_condition(f"{field} exists")(event)
    assert compile_condition(f"{field} != null")(event) is compile_condition(f"exists({field})")(event)


TOKENS = ['"a"', "'b'", "1", "-2.5", "x", "x.y", "=", "!=", "<", ">=", "and", "or", "not", "!", "(", ")", ",",
          "contains", "match", "exists", "true", "null", "==", "#", '"', "\\"]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join) | st.text(max_size=30))
def test_compiling_anything_either_works_or_raises_condition_error(text: str) -> None:
    try:
        condition = compile_condition(text)
    except ConditionError as caught:
        assert 1 <= caught.column <= len(text) + 1
        return
    assert type(condition({"x": 1, "a": "a"})) is bool
