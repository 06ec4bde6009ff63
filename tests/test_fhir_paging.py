"""Search paging (FHIR R4 http.html#paging): links, totals, opaque signed
cursors, no empty trailing page, no duplicates or gaps under concurrent
creation."""

import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fhir_checks import ids, link, seed


def _task(n: int, **extra):
    return {"resourceType": "Task", "id": f"t{n:04d}", "status": "requested", "intent": "order",
            "authoredOn": f"2024-01-{1 + n % 28:02d}", **extra}


def _pages(fhir, first_url: str):
    url, pages = first_url, []
    while url:
        response = fhir.get(url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        pages.append(bundle)
        url = link(bundle, "next")
    return pages


@pytest.mark.parametrize("count", [1, 7, 10, 25])
def test_pages_cover_everything_once_and_never_end_empty(fhir, services, count):
    seed(services, *(_task(n) for n in range(25)))
    pages = _pages(fhir, f"/fhir/Task?_count={count}")
    seen = [task_id for page in pages for task_id in ids(page)]
    assert sorted(seen) == [f"t{n:04d}" for n in range(25)]
    assert all(ids(page) for page in pages)  # no empty trailing page, even when 25 % count == 0
    assert all(page["total"] == 25 for page in pages)
    assert len(pages) == -(-25 // count)


def test_sorted_paging_with_ties_neither_repeats_nor_skips(fhir, services):
    seed(services, *(_task(n) for n in range(40)))  # 28 distinct dates: many ties
    for sort in ("authored-on", "-authored-on", "status,-_id", "-_lastUpdated"):
        seen = [task_id for page in _pages(fhir, f"/fhir/Task?_count=6&_sort={sort}") for task_id in ids(page)]
        assert sorted(seen) == [f"t{n:04d}" for n in range(40)], sort
        assert len(seen) == len(set(seen)), sort


def test_previous_links_walk_back_to_the_same_pages(fhir, services):
    seed(services, *(_task(n) for n in range(12)))
    forward = _pages(fhir, "/fhir/Task?_count=5&_sort=-authored-on")
    assert link(forward[0], "previous") is None
    back = fhir.get(link(forward[-1], "previous")).json()
    assert ids(back) == ids(forward[-2])
    back_again = fhir.get(link(back, "previous")).json()
    assert ids(back_again) == ids(forward[0])
    assert link(back_again, "previous") is None
    assert ids(fhir.get(link(back_again, "next")).json()) == ids(forward[1])


def test_links_carry_every_parameter(fhir, services):
    seed(services, *(_task(n, **{"for": {"reference": "Patient/px"}}) for n in range(6)))
    seed(services, {"resourceType": "Patient", "id": "px", "gender": "male"})
    first = fhir.get("/fhir/Task", params={"status": "requested", "_include": "Task:patient", "_count": 2,
                                           "_summary": "data", "_elements": "status", "_sort": "-authored-on"}).json()
    for page in _pages(fhir, link(first, "first")):
        assert len(ids(page)) == 2
        assert ids(page, "include") == ["px"]
        assert all("SUBSETTED" in str(entry["resource"]["meta"]) for entry in page["entry"])
    self_query = parse_qs(urlsplit(link(first, "self")).query)
    assert self_query["_include"] == ["Task:patient"] and self_query["status"] == ["requested"]


def test_links_are_short_and_opaque(fhir, services):
    seed(services, *(_task(n) for n in range(3)))
    long_value = ",".join(f"requested{n}" for n in range(40)) + ",requested"
    bundle = fhir.get("/fhir/Task", params={"status": long_value, "_count": 1, "_sort": "-authored-on,_id"}).json()
    next_url = link(bundle, "next")
    assert len(next_url) < 2048
    assert "requested" not in next_url and set(parse_qs(urlsplit(next_url).query)) == {"_cursor"}


def test_tampered_cursor_is_400(fhir, services):
    seed(services, *(_task(n) for n in range(3)))
    next_url = link(fhir.get("/fhir/Task?_count=1").json(), "next")
    token = parse_qs(urlsplit(next_url).query)["_cursor"][0]
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for bad in (flipped, token[:-4], "garbage", ""):
        response = fhir.get("/fhir/Task", params={"_cursor": bad})
        assert response.status_code == 400, bad
        assert response.json()["issue"][0]["code"] == "invalid"
    assert fhir.get("/fhir/Patient", params={"_cursor": token}).status_code == 400  # another type


def test_concurrent_creation_never_duplicates_or_skips(fhir, services):
    seed(services, *(_task(n) for n in range(30)))
    stop = threading.Event()
    created: list[int] = []

    def writer() -> None:
        n = 1000
        while not stop.is_set() and n < 1200:
            seed(services, _task(n))
            created.append(n)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for sort in ("", "&_sort=_lastUpdated", "&_sort=-authored-on"):
            seen = [task_id for page in _pages(fhir, f"/fhir/Task?_count=4{sort}") for task_id in ids(page)]
            assert len(seen) == len(set(seen)), sort
            assert {f"t{n:04d}" for n in range(30)} <= set(seen), sort
    finally:
        stop.set()
        thread.join()
    assert created  # the writer really ran during the paging
