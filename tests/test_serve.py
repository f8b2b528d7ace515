"""npsam3 serve: the HTTP API on the session bundle against the CLI's own results, the threshold
re-selection, every kind of bad input, the queue bound, the token, and a bounded load test.
A real uvicorn server on a free loopback port; the browser test is test_serve_browser.py."""

import json
import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import npsam3.image
from npsam3.cli import main as npsam3_main
from npsam3.results import png_bytes
from npsam3.serve.app import create_app
from npsam3.serve.server import running
from npsam3.serve.store import Entry, ImageStore

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MAX_UPLOAD_MB = 1
CACHE_MB = 1024
SERVER_ONLY = ("image_id", "detector_ran", "prediction", "seconds", "bundle")  # the CLI has the last two
EXEMPLAR = [-10, 5, 60, 50]  # reaches outside the image: clipped alike by the CLI and the server


def small_photo(folder, photo, size):
    """A shipped photo downscaled to ``size`` and saved as PNG: (path, bytes)."""
    path = folder / (Path(photo).stem + ".png")
    Image.open(ASSETS / photo).convert("RGB").resize(size).save(path)
    return path, path.read_bytes()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-photos")
    return {"coins": small_photo(folder, "coins.jpg", (160, 120)),
            "chelsea": small_photo(folder, "chelsea.jpg", (120, 96))}


@pytest.fixture(scope="module")
def detector_runs(np_model):
    """A list that grows by one per detector run of the shared model (while this module runs)."""
    runs, detect = [], np_model.detector.detect

    def counted(*args, **kwargs):
        runs.append(1)
        return detect(*args, **kwargs)

    np_model.detector.detect = counted
    yield runs
    del np_model.detector.detect


@pytest.fixture(scope="module")
def app(np_model, detector_runs):
    return create_app(np_model, cache_mb=CACHE_MB, workers=8, max_upload_mb=MAX_UPLOAD_MB)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def server_errors():
    """The ERROR records of uvicorn's log while a test runs (an unhandled exception, a 500)."""
    handler = Records()
    logging.getLogger("uvicorn.error").addHandler(handler)
    yield handler.records
    logging.getLogger("uvicorn.error").removeHandler(handler)


@pytest.fixture(scope="module")
def client(app):
    with running(app) as url, httpx.Client(base_url=url, timeout=300) as c:
        yield c


def upload(client, data, name="coins.png"):
    r = client.post("/v1/images", params={"name": name}, content=data)
    assert r.status_code == 200, r.text
    return r.json()


def without(result, keys=SERVER_ONLY):
    return {k: v for k, v in result.items() if k not in keys}


def cli_json(args, out, kind, stem):
    assert npsam3_main(args + ["--out", str(out), "--force"]) == 0
    return json.loads((out / f"{stem}.{kind}.json").read_text())


# ----------------------------------------------------------------------------------------------
# Results: the CLI's JSON; a new threshold re-selects without the detector
# ----------------------------------------------------------------------------------------------


def test_concept_is_the_segment_json_and_threshold_reselects(client, photos, bundle, tmp_path,
                                                             detector_runs):
    path, data = photos["coins"]
    image = upload(client, data)
    assert (image["width"], image["height"], image["name"]) == (160, 120, "coins.png")
    url = f"/v1/images/{image['id']}/concept"
    body = {"prompt": "a coin", "exemplars": [{"box": EXEMPLAR, "positive": True}]}
    before = len(detector_runs)
    first = client.post(url, json={**body, "threshold": 0.5}).json()
    assert first["detector_ran"] and len(detector_runs) == before + 1
    lower = client.post(url, json={**body, "threshold": 0.45}).json()
    again = client.post(url, json={**body, "threshold": 0.5}).json()
    assert not lower["detector_ran"] and not again["detector_ran"]
    assert len(detector_runs) == before + 1, "a new threshold ran the detector again"
    assert without(again) == without(first)
    assert len(lower["instances"]) > len(first["instances"]) > 0
    cli = cli_json(["segment", str(path), "--bundle", str(bundle), "--prompt", "a coin", "--box",
                    ",".join(map(str, EXEMPLAR)), "--threshold", "0.45"], tmp_path, "segment", "coins")
    assert without(lower) == without(cli)


def test_object_is_the_object_json_and_mask_input(client, photos, bundle, tmp_path, np_model):
    from npsam3.processor import Sam3Processor
    from npsam3.queries import object_result

    path, data = photos["coins"]
    image = upload(client, data)
    url = f"/v1/images/{image['id']}/object"
    click = {"points": [{"xy": [80, 60], "label": 1}, {"xy": [20, 100], "label": 0}]}
    served = client.post(url, json=click).json()
    cli = cli_json(["object", str(path), "--bundle", str(bundle), "--point", "80,60",
                    "--point", "20,100,0"], tmp_path, "object", "coins")
    assert without(served) == without(cli)
    # a previous prediction's low-res logits as mask_input, three candidates
    refined = client.post(url, json={**click, "multimask": True, "mask_input": {
        "prediction": served["prediction"], "mask": 0}}).json()
    state = Sam3Processor(np_model).set_image(npsam3.image.load_image(path))
    kwargs = {"point_coords": [[80, 60], [20, 100]], "point_labels": [1, 0]}
    _, _, low_res = np_model.predict_inst(state, multimask_output=False, **kwargs)
    masks, ious, _ = np_model.predict_inst(state, multimask_output=True, mask_input=low_res, **kwargs)
    expected = object_result("coins.png", (120, 160), [([80, 60], 1), ([20, 100], 0)], [], masks,
                             ious, True, True)
    assert len(refined["instances"]) == 3
    assert without(refined) == json.loads(json.dumps(expected))


def test_model_info_and_health(client, bundle, photos):
    upload(client, photos["chelsea"][1], "chelsea.png")
    info = client.get("/v1/model").json()
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    assert info["bundle"] == Path(bundle).name and info["interactive"] is True
    assert info["weights"] == manifest["weights"] and info["resolution"] == 1008
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/images", "/v1/images/{image_id}/concept", "/v1/images/{image_id}/object",
            "/v1/model", "/v1/health"} <= set(paths)
    assert client.get("/docs").status_code == 200
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["cache_budget"] == CACHE_MB << 20
    assert 0 < health["cache_bytes"] <= health["cache_budget"]


# ----------------------------------------------------------------------------------------------
# Bad input: each its 4xx and a one-line JSON error; the server keeps serving
# ----------------------------------------------------------------------------------------------


def check_error(response, status, words=""):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    assert words.lower() in body["error"].lower(), body["error"]
    return body["error"]


def still_serving(client, image_id):
    assert client.get("/v1/health").status_code == 200
    r = client.post(f"/v1/images/{image_id}/concept", json={"prompt": "a coin", "threshold": 0.5,
                                                            "exemplars": [{"box": EXEMPLAR}]})
    assert r.status_code == 200 and r.json()["format"] == "npsam3-segment", r.status_code


def partial_upload(base_url, wait=None):
    """Send the headers of a 0.9 MB upload (within the limit) and 64 KB of it; then close the
    socket, or wait up to ``wait`` seconds for the server's answer and return its status line."""
    host, port = base_url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/images?name=cut.jpg HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 900000\r\n\r\n")
        s.sendall(b"\xff\xd8" + b"\0" * 65536)
        if wait:
            s.settimeout(wait)
            return s.recv(4096).split(b"\r\n")[0]


def test_bad_uploads(client, photos, monkeypatch, server_errors):
    _, data = photos["coins"]
    image_id = upload(client, data)["id"]
    check_error(client.post("/v1/images", content=b"not a picture"), 422, "not a readable image")
    check_error(client.post("/v1/images", content=b""), 422, "empty")
    check_error(client.post("/v1/images", params={"name": "cut.png"}, content=data[:-12]), 422,
                "cut.png")
    jpeg = (ASSETS / "coffee.jpg").read_bytes()
    check_error(client.post("/v1/images", content=jpeg[: len(jpeg) // 2]), 422, "cannot read")
    big = os.urandom((MAX_UPLOAD_MB << 20) + 1)
    check_error(client.post("/v1/images", content=big), 413, "larger than")

    def chunks():  # no Content-Length: refused while streaming
        for _ in range(4 * MAX_UPLOAD_MB):
            yield big[: 1 << 19]

    check_error(client.post("/v1/images", content=chunks()), 413, "larger than")
    monkeypatch.setattr(npsam3.image, "MAX_PIXELS", 160 * 120 - 1)
    check_error(client.post("/v1/images", content=png_bytes(np.zeros((120, 161, 3), np.uint8))),
                422, "too large")
    monkeypatch.undo()
    partial_upload(str(client.base_url))  # the client disconnects mid-upload
    monkeypatch.setattr("npsam3.serve.app.UPLOAD_SECONDS", 0.5)
    assert partial_upload(str(client.base_url), wait=10) == b"HTTP/1.1 408 Request Timeout"
    monkeypatch.undo()
    still_serving(client, image_id)
    for name, label in (("../../etc/passwd", "passwd"), ("C:\\photos\\x.png", "x.png"),
                        ("\x00", "upload"), ("coins.png", "coins.png")):  # labels, never paths
        assert upload(client, data, name)["name"] == label
    assert not server_errors, [r.getMessage() for r in server_errors]


def test_bad_requests(client, photos, server_errors):
    image_id = upload(client, photos["coins"][1])["id"]
    concept, obj = f"/v1/images/{image_id}/concept", f"/v1/images/{image_id}/object"
    raw = {"headers": {"Content-Type": "application/json"}}
    check_error(client.post(concept, content=b'{"prompt": "a co', **raw), 400, "not valid JSON")
    check_error(client.post(concept, content=b'{"prompt": "a", "threshold": NaN}', **raw), 422)
    check_error(client.post(concept, json={"prompt": "a", "threshold": 2}), 422, "threshold")
    check_error(client.post(concept, json={"prompt": "a", "colour": 1}), 422, "colour")
    check_error(client.post(concept, json={"prompt": "  "}), 422, "empty")
    check_error(client.post(concept, json={}), 422, "give a text prompt")
    check_error(client.post(concept, json={"exemplars": [{"box": [1e300, 0, 1e301, 9]}]}), 422,
                "exemplars.0.box")
    check_error(client.post(concept, json={"exemplars": [{"box": [1e8, 0, 2e8, 9]}]}), 422,
                "outside")
    check_error(client.post(concept, json={"exemplars": [{"box": [50, 50, 10, 60]}]}), 422,
                "inverted")
    check_error(client.post(concept, json={"exemplars": [{"box": [1, 2, 3]}]}), 422, "box")
    check_error(client.post("/v1/images/" + "0" * 64 + "/concept", json={"prompt": "a"}), 404,
                "no image")
    check_error(client.get("/v1/images/nope"), 404, "no image")
    check_error(client.post(obj, json={}), 422, "give a prompt")
    check_error(client.post(obj, json={"points": [{"xy": [-5, 60]}]}), 422, "outside")
    check_error(client.post(obj, json={"points": [{"xy": [5e7, 1e8]}]}), 422, "outside")
    check_error(client.post(obj, json={"points": [{"xy": [5, 1e308]}]}), 422, "points.0.xy")
    check_error(client.post(obj, json={"points": [{"xy": [5, 6], "label": 2}]}), 422, "label")
    check_error(client.post(obj, json={"points": [{"xy": [5, 6]}] * 65}), 422, "points")
    check_error(client.post(obj, json={"box": [200, 200, 300, 300]}), 422, "outside")
    check_error(client.post(obj, json={"box": [5, 5, 40, 40], "mask_input": {"prediction": "999"}}),
                404, "no prediction")
    check_error(client.post(obj, json="just a string"), 422)
    check_error(client.get("/v1/nothing"), 404)
    check_error(client.delete("/v1/health"), 405)
    still_serving(client, image_id)
    assert not server_errors, [r.getMessage() for r in server_errors]


def test_token(np_model):
    app = create_app(np_model, token="s3cret")
    with running(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/health").status_code == 200
        assert c.get("/").status_code == 200  # the page carries no data; it asks for the token
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            check_error(c.get("/v1/model", headers=headers), 401, "token")
            check_error(c.post("/v1/images", headers=headers, content=b"x"), 401, "token")
        r = c.get("/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["interactive"]
        check_error(c.post("/v1/images", headers={"Authorization": "Bearer s3cret"}, content=b"x"),
                    422, "not a readable image")


def test_full_queue_is_503_with_retry_after(np_model):
    app = create_app(np_model, workers=2)
    release = threading.Event()
    app.state.engine.executor.submit(release.wait)  # the inference thread is busy
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c, \
            ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(c.get, "/v1/images/abc") for _ in range(2)]
        deadline = time.monotonic() + 10
        while c.get("/v1/health").json()["pending"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.post("/v1/images", content=b"x")
        check_error(r, 503, "busy")
        assert int(r.headers["Retry-After"]) >= 1
        release.set()
        assert [f.result().status_code for f in waiting] == [404, 404]
        check_error(c.post("/v1/images", content=b"x"), 422, "not a readable image")


# ----------------------------------------------------------------------------------------------
# The page: served, and nothing in it loads from outside
# ----------------------------------------------------------------------------------------------


def test_page_loads_nothing_from_outside(client):
    import re

    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(links) == ["/static/app.js", "/static/style.css", "data:,"]  # data: = no favicon
    for link in [link for link in links if link.startswith("/static/")]:
        text = client.get(link).text
        assert client.get(link).status_code == 200 and len(text) > 100
        assert not re.search(r"https?:|//[a-z]|@import", text, re.I), link
        assert not re.search(r"\burl\(", text), link
    assert not re.search(r"https?:", page.text)


# ----------------------------------------------------------------------------------------------
# The store: LRU within the memory budget
# ----------------------------------------------------------------------------------------------


def test_store_evicts_least_recently_used_within_budget():
    def entry(key, megabytes):
        fpn = np.zeros(megabytes << 18, np.float32)  # megabytes MB
        state = {"original_height": 4, "original_width": 4,
                 "backbone_out": {"backbone_fpn": [fpn, fpn[:10]]}}
        return Entry(key, key, state)

    store = ImageStore(10 << 20)
    for key in "abc":
        store.add(entry(key, 3))  # views and repeats of one buffer count once
    assert list(store.entries) == ["a", "b", "c"] and store.held == 9 << 20
    store.get("a")
    store.add(entry("d", 3))
    assert list(store.entries) == ["c", "a", "d"] and store.held == 9 << 20
    store.entries["a"].keep_detection("p", {"pixel_embed": np.zeros(1 << 18, np.float32)})
    assert store.shrink() == 10 << 20 and list(store.entries) == ["c", "a", "d"]
    store.add(entry("e", 12))  # larger than the budget alone: kept, everything else goes
    assert list(store.entries) == ["e"]
    with pytest.raises(Exception, match="no image with id 'a'"):
        store.get("a")


def test_server_drops_least_recently_used_image(np_model, photos):
    app = create_app(np_model, cache_mb=1)  # less than one image: only the one in use stays
    with running(app) as url, httpx.Client(base_url=url, timeout=300) as c:
        coins = upload(c, photos["coins"][1])
        chelsea = upload(c, photos["chelsea"][1], "chelsea.png")
        check_error(c.get(f"/v1/images/{coins['id']}"), 404, "no image")
        assert c.get(f"/v1/images/{chelsea['id']}").json()["name"] == "chelsea.png"
        health = c.get("/v1/health").json()
        assert health["images"] == 1 and health["cache_bytes"] > health["cache_budget"]


# ----------------------------------------------------------------------------------------------
# Load: 4 concurrent clients, results identical to one client's
# ----------------------------------------------------------------------------------------------


def rss_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise RuntimeError("no VmRSS")


def test_load_four_clients(client, photos, app):
    coins, chelsea = photos["coins"][1], photos["chelsea"][1]
    ids = {name: upload(client, data, f"{name}.png")["id"] for name, data in
           (("coins", coins), ("chelsea", chelsea))}

    def concept(t):
        return ("post", f"/v1/images/{ids['coins']}/concept", {"json": {
            "prompt": "a coin", "threshold": t, "exemplars": [{"box": EXEMPLAR}]}})

    def click(name, *points):
        return ("post", f"/v1/images/{ids[name]}/object", {"json": {
            "points": [{"xy": xy, "label": label} for xy, label in points]}})

    requests = ([("post", "/v1/images", {"content": d, "params": {"name": n}})
                 for n, d in (("coins.png", coins), ("chelsea.png", chelsea))] * 3
                + [concept(t) for t in (0.46, 0.5, 0.55)]
                + [click("coins", ([40, 30], 1)), click("coins", ([120, 90], 1), ([5, 5], 0)),
                   click("chelsea", ([60, 48], 1)), click("chelsea", ([30, 30], 1), ([100, 80], 0))]
                + [("get", f"/v1/images/{ids['chelsea']}", {}), ("get", "/v1/model", {})])

    def send(c, request):
        method, url, kwargs = request
        r = getattr(c, method)(url, **kwargs)
        return r.status_code, without(r.json(), ("prediction", "cached"))

    expected = [send(client, r) for r in requests]  # one client, one request at a time
    assert all(status == 200 for status, _ in expected)
    rng = random.Random(0)
    plan = [rng.randrange(len(requests)) for _ in range(200)]
    rss = rss_bytes()

    def run(part):
        with httpx.Client(base_url=client.base_url, timeout=300) as c:
            return [(i, send(c, requests[i])) for i in part]

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        done = [x for part in pool.map(run, [plan[k::4] for k in range(4)]) for x in part]
    seconds = time.monotonic() - start
    assert len(done) == len(plan)
    mismatched = [i for i, got in done if got != expected[i]]
    assert not mismatched, f"{len(mismatched)} of {len(done)} answers differ, e.g. {requests[mismatched[0]][1]}"
    grown = rss_bytes() - rss
    held = app.state.engine.store.held
    assert held <= CACHE_MB << 20
    assert grown < 64 << 20, f"RSS grew by {grown >> 20} MB over {len(plan)} requests ({seconds:.0f} s)"


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def test_serve_command(bundle, monkeypatch, capsys):
    import sys

    served = []
    monkeypatch.setattr("npsam3.serve.server.serve", lambda app, host, port: served.append(
        (app, host, port)))
    assert npsam3_main(["serve", "--bundle", str(bundle), "--port", "8123"]) == 0
    assert served[-1][1:] == ("127.0.0.1", 8123) and "--token" not in capsys.readouterr().err
    assert npsam3_main(["serve", "--bundle", str(bundle), "--host", "0.0.0.0"]) == 0
    assert "0.0.0.0 without --token" in capsys.readouterr().err
    assert npsam3_main(["serve", "--bundle", str(bundle), "--host", "0.0.0.0", "--token", "t",
                        "--max-upload-mb", "0.001"]) == 0
    assert "--token" not in capsys.readouterr().err
    with running(served[-1][0]) as url, httpx.Client(base_url=url) as c:
        check_error(c.get("/v1/model"), 401, "token")
        check_error(c.post("/v1/images", content=b"x" * 2000, headers={"Authorization": "Bearer t"}),
                    413, "0.001 MB")
    for args, code, words in ((["--workers", "0"], 2, "whole number"),
                              (["--max-upload-mb", "-1"], 2, "positive"),
                              (["--bundle", "/no/such/bundle"], 1, "/no/such/bundle")):
        try:
            assert npsam3_main(["serve", "--bundle", str(bundle), *args]) == code
        except SystemExit as e:  # argparse's errors
            assert e.code == code
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the serve extra were not installed
    monkeypatch.delitem(sys.modules, "npsam3.serve.app")
    assert npsam3_main(["serve", "--bundle", str(bundle)]) == 1
    assert "pip install 'npsam3[serve]'" in capsys.readouterr().err
