"""The dashboard's page and files: public, in the package, and protected by headers.

The page holds no data (its scripts fetch everything from the API with the token
the operator signs in with), so it needs no token; it loads nothing from another
origin, runs no inline script and cannot be framed. API answers are never cached.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import ApiWorld, api_world, sqlite_settings

from safereplay.recovery.api.dashboard import STATIC


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiWorld]:
    yield from api_world(sqlite_settings(request, tmp_path), tmp_path)


def test_the_page_and_its_files_need_no_token_and_carry_the_security_headers(
    world: ApiWorld,
) -> None:
    page = world.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "common.js", "console.js", "style.css"):
        served = world.client.get(f"/static/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-security-policy"] == policy
    assert world.client.get("/static/nothing-here.js").status_code == 404


def test_api_answers_are_never_cached_and_still_need_a_token(world: ApiWorld) -> None:
    assert world.client.get("/api/status").status_code == 401
    answer = world.get("viewer", "/api/status")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert "content-security-policy" not in answer.headers


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), path.name
        assert "@import" not in text and "url(http" not in text, path.name
        assert ".innerHTML" not in text, f"{path.name}: data goes in as text, never as HTML"
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.DOTALL)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=", page), "no inline event handler"
    # The token input has no name: a form sent without the script carries no token.
    [token_input] = re.findall(r"<input[^>]*id=\"token\"[^>]*>", page, flags=re.DOTALL)
    assert 'type="password"' in token_input and "name=" not in token_input
