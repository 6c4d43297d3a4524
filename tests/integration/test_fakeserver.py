"""The bundled fake Track API: strict limits, auth, sizes, control, and its command."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from django_cio.fakeserver import FakeTrackAPI

pytestmark = pytest.mark.integration


def call(fake, method, path, body, **kwargs):
    return requests.request(method, fake.url + path, json=body,
                            auth=(fake.site_id, fake.api_key), timeout=5, **kwargs)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/customers/" + "x" * 151, {}, "identifiers"),
        ("/api/v1/customers/1", {f"a{i}": 1 for i in range(301)}, "attributes"),
        ("/api/v1/customers/1", {"n" * 151: 1}, "attributes.nnn"),
        ("/api/v1/customers/1", {"bio": "x" * 1001}, "attributes.bio"),
    ],
)
def test_strict_v1_identify_refuses_past_the_limits(fake, path, body, field):
    response = call(fake, "PUT", path, body)
    assert response.status_code == 400
    assert response.json()["meta"]["error"].startswith(field)
    assert fake.store.people == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n" * 101}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "data": {"blob": "y" * 100_001}}, "attributes"),
        ({"name": "x", "id": "not-a-ulid"}, "id"),
        ({"name": "x", "timestamp": "yesterday"}, "timestamp"),
    ],
)
def test_strict_v1_events_refuse_past_the_limits(fake, body, field):
    response = call(fake, "POST", "/api/v1/customers/1/events", body)
    assert response.status_code == 400
    assert response.json()["meta"]["error"].startswith(field)


def test_strict_devices_need_a_known_platform(fake):
    response = call(fake, "PUT", "/api/v1/customers/1/devices",
                    {"device": {"id": "t", "platform": "palm"}})
    assert response.status_code == 400


def test_lenient_mode_takes_anything_well_formed(fake):
    fake.configure(strict=False)
    assert call(fake, "PUT", "/api/v1/customers/1", {"bio": "x" * 5000}).status_code == 200


def test_v2_entity_and_batch(fake):
    op = {"type": "person", "identifiers": {"id": "1"}, "action": "identify",
          "attributes": {"a": 1}}
    assert call(fake, "POST", "/api/v2/entity", op).status_code == 200
    bad = {"type": "person", "identifiers": {"id": "2"}, "action": "fly"}
    assert call(fake, "POST", "/api/v2/entity", bad).status_code == 400
    response = call(fake, "POST", "/api/v2/batch", {"batch": [op, bad, "junk", op]})
    assert response.status_code == 207
    assert [(e["batch_index"], e["field"]) for e in response.json()["errors"]] == [
        (1, "action"), (2, "batch")]
    assert call(fake, "POST", "/api/v2/batch", {"batch": []}).status_code == 400
    assert fake.store.ops["identify"] == 3


def test_oversized_batch_item_is_refused_alone(fake):
    small = {"type": "person", "identifiers": {"id": "1"}, "action": "delete"}
    big = {"type": "person", "identifiers": {"id": "2"}, "action": "event", "name": "x",
           "attributes": {"blob": "y" * 40_000}}
    response = call(fake, "POST", "/api/v2/batch", {"batch": [small, big]})
    assert response.status_code == 207
    assert response.json()["errors"][0]["batch_index"] == 1


def test_batch_body_over_500_kb_is_413(fake):
    ops = [{"type": "person", "identifiers": {"id": str(i)}, "action": "event", "name": "x",
            "attributes": {"blob": "y" * 30_000}} for i in range(20)]
    assert call(fake, "POST", "/api/v2/batch", {"batch": ops}).status_code == 413


def test_unknown_paths_are_404_and_bad_json_400(fake):
    assert call(fake, "GET", "/api/v1/nothing", {}).status_code == 404
    response = requests.put(f"{fake.url}/api/v1/customers/1", data=b"{nope",
                            auth=(fake.site_id, fake.api_key), timeout=5)
    assert response.status_code == 400


def test_no_auth_is_401(fake):
    assert requests.put(f"{fake.url}/api/v1/customers/1", json={}, timeout=5).status_code == 401
    assert fake.store.people == {}


def test_counts_requests_per_second(fake):
    for _ in range(3):
        call(fake, "DELETE", "/api/v1/customers/1", {})
    stats = fake.store.stats()
    assert sum(stats["per_second"].values()) == 3
    assert stats["max_requests_per_second"] >= 2


def test_stop_closes_keep_alive_connections():
    fake = FakeTrackAPI().start()
    session = requests.Session()
    session.delete(f"{fake.url}/api/v1/customers/1", auth=(fake.site_id, fake.api_key),
                   timeout=5)
    fake.stop()
    assert fake._httpd.connections == set()
    with pytest.raises(requests.ConnectionError):
        session.delete(f"{fake.url}/api/v1/customers/1", timeout=2)


@pytest.mark.parametrize("how", ["manage.py", "python -m"])
def test_command_serves_until_sigterm(tmp_path, how):
    if how == "manage.py":
        command = [sys.executable, "-m", "django", "cio_fakeserver"]
    else:
        command = [sys.executable, "-m", "django_cio.fakeserver"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [*command, "--port", "0", "--site-id", "s", "--api-key", "k", "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        assert requests.put(f"{url}/api/v1/customers/1", json={"a": 1}, auth=("s", "k"),
                            timeout=5).status_code == 200
        assert requests.get(f"{url}/_fake/people", timeout=5).json() == {"1": {"a": 1}}
    finally:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, process.stderr.read()


def test_rate_below_one_per_second_still_lets_one_through(fake):
    fake.configure(rate_limit=0.5)
    assert call(fake, "DELETE", "/api/v1/customers/1", {}).status_code == 200
    assert call(fake, "DELETE", "/api/v1/customers/1", {}).status_code == 429


def test_stop_without_start_returns():
    FakeTrackAPI().stop()


def test_fake_server_bugs_answer_500(fake):
    fake.configure(strict=False)
    response = call(fake, "POST", "/api/v2/entity", {"type": "person"})  # no action
    assert response.status_code == 500
    assert fake.store.stats()["statuses"] == {"500": 1}


def test_bad_content_length_is_400(fake):
    import socket

    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), 5) as sock:
        sock.sendall(b"PUT /api/v1/customers/1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        assert sock.recv(100).split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"
    assert fake.store.stats()["statuses"] == {"400": 1}


def test_request_log_is_bounded(fake):
    big = {"batch": [{"type": "person", "identifiers": {"id": str(i)}, "action": "identify",
                      "attributes": {"blob": "x" * 500}} for i in range(40)]}
    call(fake, "POST", "/api/v2/batch", big)
    assert fake.store.requests[-1]["body"]["omitted_bytes"] > 8192
    limited = requests.get(f"{fake.url}/_fake/requests?limit=0", timeout=5).json()
    assert limited == []
    assert requests.get(f"{fake.url}/_fake/requests?limit=x", timeout=5).status_code == 400


def test_several_sites_keep_their_own_people_limits_and_region(fake):
    eu = fake.add_site("eu-site", "eu-key", region="eu")
    as_eu = {"auth": ("eu-site", "eu-key"), "timeout": 5}
    assert requests.get(fake.url + "/api/v1/accounts/region", **as_eu).json() == {
        "url": "https://track-eu.customer.io", "region": "eu", "environment_id": 2}
    assert call(fake, "GET", "/api/v1/accounts/region", None).json()["environment_id"] == 1
    wrong = requests.get(fake.url + "/api/v1/accounts/region", auth=("eu-site", "fake-api-key"),
                         timeout=5)
    assert wrong.status_code == 401
    eu.configure(rate_limit=1)
    person = {"type": "person", "identifiers": {"id": "1"}, "action": "identify",
              "attributes": {"a": 1}}
    assert requests.post(fake.url + "/api/v2/entity", json=person, **as_eu).status_code == 200
    assert requests.post(fake.url + "/api/v2/entity", json=person, **as_eu).status_code == 429
    assert call(fake, "POST", "/api/v2/entity", person).status_code == 200  # its own limit
    assert (list(eu.store.people), eu.received) == (["1"], 3)
    assert list(fake.store.people) == ["1"]
    assert fake.received == 3  # its region, the wrong key (counted on the first site), one op
    stats = requests.get(fake.url + "/_fake/stats?site=eu-site", timeout=5).json()
    assert stats["statuses"] == {"200": 2, "429": 1}
    assert requests.get(fake.url + "/_fake/stats?site=nope", timeout=5).status_code == 404
    with pytest.raises(ValueError, match="served already"):
        fake.add_site("eu-site", "other")


def test_the_command_serves_every_configured_workspace():
    workspaces = {"eu": {"SITE_ID": "eu-s", "API_KEY": "eu-k", "REGION": "eu"}}
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": os.getcwd(),
           "CIO_TEST_CUSTOMERIO": json.dumps({"WORKSPACES": workspaces})}
    process = subprocess.Popen([sys.executable, "-m", "django", "cio_fakeserver", "--port", "0"],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        banner = process.stdout.readline()
        assert "'eu-s' (eu)" in banner
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        answer = requests.get(f"{url}/api/v1/accounts/region", auth=("eu-s", "eu-k"), timeout=5)
        assert answer.json()["region"] == "eu"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
