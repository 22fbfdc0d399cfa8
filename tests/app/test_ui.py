"""The demo page's routes in-process: its files, the Content-Security-Policy, NNSERVE_UI,
the route order, and the data it ships (real scikit-learn digits, the wine example)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import nnlib
from app import ui
from app.main import create_app

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "app" / "ui" / "static"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text += data


def test_page_and_its_files_are_served_with_the_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src"):
        assert directives[directive] == "'self'"  # no other origin, no 'unsafe-inline'
    assert "unsafe" not in policy and "http" not in policy and "*" not in policy
    parser = _Tags()
    parser.feed(page.text)
    assert parser.script_text.strip() == ""  # no inline script
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)  # no handlers
        assert "style" not in attrs, (tag, attrs)
        link = attrs.get("src") or (attrs.get("href") if tag == "link" else None)
        if link:
            assert link.startswith("/ui/"), link  # served here
            served = client.get(link)
            assert served.status_code == 200, link
            assert served.headers["content-security-policy"] == policy
            assert served.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/settings").json() == {"api_key_required": False}


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/..%2Fmain.py", "/ui/%2e%2e/__init__.py"])
def test_only_the_page_s_own_files_are_served(client, path):
    response = client.get(path)
    assert response.status_code == 404


def test_the_settings_say_when_a_key_is_needed_but_never_the_key(make_client):
    client = make_client(api_key="s3cret")
    response = client.get("/ui/settings")
    assert response.json() == {"api_key_required": True}
    assert "s3cret" not in response.text and "s3cret" not in client.get("/ui/app.js").text


def test_nnserve_ui_false_turns_the_page_off(make_client, monkeypatch):
    monkeypatch.setenv("NNSERVE_UI", "false")
    from app.config import Settings

    assert Settings().ui is False
    client = make_client(ui=False)
    for path in ("/", "/ui/app.js", "/ui/settings"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": f"no route GET {path}"}
    assert client.post("/predict", json={"inputs": [[0] * 64]}).status_code == 200


def test_page_routes_come_after_every_api_route():
    paths = [getattr(route, "path", None) for route in create_app().router.routes]
    first_page = paths.index("/")
    for api in ("/predict", "/models/{name}/predict", "/v2/models/{name}/infer",
                "/models/{name}/explain", "/health", "/ready", "/metrics", "/models"):
        assert paths.index(api) < first_page, api


def test_the_page_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "app.ui" in config["packages"]
    assert config["package-data"]["app.ui"] == ["static/*"]
    assert sorted(path.name for path in STATIC.iterdir()) == sorted(ui.FILES)


def test_example_digits_are_scikit_learn_s(digits):
    images, targets = digits
    data = json.loads((STATIC / "digits.json").read_text())
    assert [example["target"] for example in data["examples"]] == list(range(10))
    for example in data["examples"]:
        np.testing.assert_array_equal(example["image"], images[example["index"]])
        assert targets[example["index"]] == example["target"]


def test_wine_example_is_its_first_held_out_wine(shipped_dir):
    from nnlib.cli import split_indices
    from nnlib.data import load_bundled

    metadata = nnlib.load(shipped_dir / "wine-mlp.joblib").metadata
    data = load_bundled("wine")
    _, held_out = split_indices(data.y, 0.2, 0)
    np.testing.assert_allclose(metadata["example"], data.X[held_out[0]], rtol=1e-6)


def test_page_script_calls_only_this_server_s_apis():
    script = (STATIC / "app.js").read_text()
    urls = set(re.findall(r'"(/[a-z0-9/{}._-]*)', script))
    assert urls <= {"/ui/settings", "/models", "/models/", "/ui/digits.json", "/predict",
                    "/explain"}, urls
    assert "http://" not in script and "https://" not in script
    # Metadata and answers go in as text, never as markup or code.
    for sink in ("eval(", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                 "new Function", "setAttribute(\"on"):
        assert sink not in script, sink
