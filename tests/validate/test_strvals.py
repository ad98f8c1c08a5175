"""Helm's --set syntax: parser cases (expected values from Helm's strvals behaviour and parser_test.go)."""

import pytest

from llm_finetune.validate.strvals import StrvalsError, parse, parse_into


@pytest.mark.parametrize("expr, expected", [
    ("name=value", {"name": "value"}),
    ("a.b.c=x", {"a": {"b": {"c": "x"}}}),
    ("a=1,b=2", {"a": 1, "b": 2}),
    # typedVal: ints (not starting with 0), booleans and null in any case; decimals stay strings
    ("i=42,n=-5,p=+7,z=0,o=007,f=0.0002,e=1e3", {"i": 42, "n": -5, "p": 7, "z": 0, "o": "007", "f": "0.0002", "e": "1e3"}),
    ("t=TRUE,f=false,n=Null", {"t": True, "f": False, "n": None}),
    ("big=99999999999999999999", {"big": "99999999999999999999"}),  # overflows int64: stays a string
    ("l={a,b,c}", {"l": ["a", "b", "c"]}),
    ("l={1,two},x=y", {"l": [1, "two"], "x": "y"}),
    ("l[0]=a,l[2]=c", {"l": ["a", None, "c"]}),
    ("l[1].name=x", {"l": [None, {"name": "x"}]}),
    ("m[0][1]=3", {"m": [[None, 3]]}),
    ("esc=a\\,b,dot\\.key=v", {"esc": "a,b", "dot.key": "v"}),
    ("empty=", {"empty": ""}),
    ("a.", {}),
])
def test_parse_like_helm(expr, expected):
    assert parse(expr) == expected


def test_set_string_and_set_json():
    assert parse("a=1,b=true,c=null", mode="string") == {"a": "1", "b": "true", "c": "null"}
    assert parse('a={"x": [1, 2.5]}, b=, c="s"', mode="json") == {"a": {"x": [1, 2.5]}, " b": None, " c": "s"}
    assert parse("l[1]=[1,2]", mode="json") == {"l": [None, [1, 2]]}


def test_parse_into_changes_existing_values():
    values = {"l": ["A", "B"], "m": {"keep": 1}}
    parse_into("l[0]=C,m.new=2", values)
    assert values == {"l": ["C", "B"], "m": {"keep": 1, "new": 2}}


@pytest.mark.parametrize("expr, words", [
    ("a", "key 'a' has no value"),
    ("a,b=1", "cannot end with ,"),
    ("a.b", "key 'b' has no value"),
    ("a[x]=1", "'x' is not a number"),
    ("a[-1]=1", "negative -1 index"),
    ("a={1,2", "list must terminate with '}'"),
    ("a[99999999]=1", "greater than maximum supported index"),
    ("a[0]x=1", "unexpected data at end of array index"),
    ("x=[1,", "invalid JSON value"),
])
def test_parse_errors(expr, words):
    with pytest.raises(StrvalsError, match=words.replace("[", r"\[").replace("(", r"\(")):
        parse(expr, mode="json" if expr.startswith("x=[") else "typed")


def test_type_conflicts_with_existing_values():
    with pytest.raises(StrvalsError, match="is not a map"):
        parse_into("a.b=1", {"a": "scalar"})
    with pytest.raises(StrvalsError, match="is not a list"):
        parse_into("a[0]=1", {"a": {"b": 1}})
