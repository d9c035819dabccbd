"""The HTML pages' parameters, fuzzed: the pages are not in the OpenAPI, so schemathesis
never reaches them (test_api_schemathesis.py). Every path and query parameter of every
page route gets hostile values (huge and negative numbers, text, bytes that are not
UTF-8, long strings), one parameter at a time with the others valid: no answer is a 5xx,
and an out-of-range number is the JSON API's 422 naming the parameter."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from problems import problem_of

from saefeat.api import page_routes

# Valid values for the parameters not under test (the seeded catalog's sae-a has 57).
VALID_PATH = {"sae_id": "sae-a", "index": "3"}
# Sent as they are (already URL-encoded): a lone surrogate, bytes that are not UTF-8, a
# NUL, a slash, numbers past every integer column.
RAW = ["%ED%A0%80", "%FF%FE", "%00", "a%2Fb", "..", "%2E%2E", str(2**63), str(2**31),
       str(-(2**63) - 1), "1e308", "NaN", "-0", "0x10", " 1", "１２"]  # fmt: skip
HOSTILE = st.one_of(
    st.sampled_from(RAW).map(lambda raw: (raw, False)),
    st.integers(min_value=-(2**80), max_value=2**80).map(lambda n: (str(n), True)),
    st.text(max_size=300).map(lambda text: (text, True)),
    st.sampled_from(["x" * 5000, "é" * 2000, "🙂" * 1000]).map(lambda s: (s, True)),
)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def page_parameters() -> list[tuple[APIRoute, str, str]]:
    """(route, parameter, "path" or "query") for every parameter of every page route."""
    routes = [r for r in page_routes.router.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} >= {"/", "/saes/{sae_id}", "/saes/{sae_id}/features/{index}"}
    return [(r, p.alias, where) for r in routes
            for where, params in (("path", r.dependant.path_params),
                                  ("query", r.dependant.query_params))
            for p in params]  # fmt: skip


PARAMETERS = page_parameters()


def url(route: APIRoute, name: str, where: str, value: str) -> str:
    path = {k: value if (where, k) == ("path", name) else v for k, v in VALID_PATH.items()}
    out = route.path.format(**{k: v for k, v in path.items() if "{" + k + "}" in route.path})
    return f"{out}?{name}={value}" if where == "query" else out


@pytest.fixture
def page_client(app, catalog):
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("route", "name", "where"), PARAMETERS, ids=[f"{r.path}:{n}" for r, n, _ in PARAMETERS]
)
def test_no_page_parameter_value_is_a_server_error(page_client, route, name, where):
    @FUZZ
    @given(value=HOSTILE)
    def run(value: tuple[str, bool]) -> None:
        text, encode = value
        sent = quote(text, safe="") if encode else text
        r = page_client.get(url(route, name, where, sent))
        assert r.status_code < 500, f"{route.path} {name}={text!r}: {r.status_code} {r.text}"

    run()


def test_every_page_parameter_is_fuzzed():
    """A new page parameter joins the fuzzing by itself; this pins the ones known now."""
    names = {(r.path, n) for r, n, _ in PARAMETERS}
    assert {("/saes/{sae_id}/features/{index}", "index"), ("/saes/{sae_id}", "page"),
            ("/", "q"), ("/", "cursor")} <= names  # fmt: skip


# The numbers of the issue: 2^63 overflowed SQLite's integer (OverflowError), 2^31
# PostgreSQL's (NumericValueOutOfRange); both were a 500.
@pytest.mark.parametrize("index", [2**63, 2**64, 2**31, -1, -(2**63) - 1])
def test_an_out_of_range_feature_index_is_422_like_the_json_route(page_client, index):
    page = problem_of(page_client.get(f"/saes/sae-a/features/{index}"), 422)
    api = problem_of(page_client.get(f"/v1/saes/sae-a/features/{index}"), 422)
    assert [(e["field"], e["location"]) for e in page["errors"]] == [("index", "path")]
    assert [e["field"] for e in api["errors"]] == ["index"]


@pytest.mark.parametrize("page", [2**63, 100_001, -1, "x"])
def test_an_out_of_range_sae_page_is_422(page_client, page):
    problem = problem_of(page_client.get(f"/saes/sae-a?page={page}"), 422)
    assert [(e["field"], e["location"]) for e in problem["errors"]] == [("page", "query")]


def test_pages_within_range_still_answer(page_client):
    assert page_client.get("/saes/sae-a/features/56").status_code == 200
    assert page_client.get("/saes/sae-a/features/57").status_code == 404  # d_sae is 57
    assert page_client.get(f"/saes/sae-a/features/{2**31 - 1}").status_code == 404
    assert page_client.get("/saes/sae-a?page=100000").status_code == 200
