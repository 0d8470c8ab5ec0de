"""The ClaimX API simulator over real HTTP: data, auth, latency, faults, counts, control."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime

import httpx
import pytest

from kafka_pipeline.simulator import (
    DEFAULT_TOKEN,
    SimulatorError,
    SimulatorProcess,
    data,
    make_token,
    project_children,
    project_of,
)
from kafka_pipeline.simulator.server import URL_PREFIX

PROJECT = 5_000_003
OTHER = 5_000_004

PROJECT_FIELDS = (
    "projectId projectNumber mfn secondaryNumber createdDate status dateOfLoss typeOfLoss causeOfLoss "
    "lossDescription yearBuilt squareFootage dateReceived dateContacted plannedInspectionDate dateInspected "
    "appointmentDate customAttribute1 customAttribute2 customAttribute3 customExternalUniqueId "
    "customerInformation address"
).split()
CUSTOMER_FIELDS = "firstName lastName customBusinessName businessLineType emails phones".split()
ADDRESS_FIELDS = "street1 street2 city stateProvince zipPostcode county country".split()
MEDIA_FIELDS = (
    "mediaID taskAssignmentId mediaType mediaName mediaDescription mediaComment latitude longitude "
    "gpsSource takenDate fullDownloadLink expiresAt"
).split()
TASK_FIELDS = (
    "assignmentId taskId taskName formId projectId assigneeId assignorId assignor dateAssigned "
    "dateCompleted cancelledDate status stpEnabled mfn customTask"
).split()
CUSTOM_TASK_FIELDS = (
    "taskId compId name description formId formName enabled default isManualDelivery "
    "isExternalLinkDelivery providePortalAccess notifyAssignedSendRecipient notifyAssignedSendRecipientSms "
    "notifyAssignedSubject notifyTaskCompleted notifyCompletedSubject allowReSubmit autoGeneratePdf "
    "modifiedBy modifiedById modifiedDate"
).split()
LINK_FIELDS = (
    "linkId linkCode url notificationAccessMethod countryId stateId email firstName lastName phone phoneCountryCode"
).split()
VIDEO_FIELDS = (
    "videoCollaborationId claimId mfn claimNumber policyNumber emailUserName claimRepFirstName "
    "claimRepLastName claimRepFullName numberOfVideos numberOfPhotos numberOfViewers sessionCount "
    "totalTimeSeconds totalTime createdDate liveCallFirstSession liveCallLastSession companyId companyName guid"
).split()


def aware(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, text
    return parsed


@pytest.fixture
def client(simulator: SimulatorProcess):
    with httpx.Client(base_url=simulator.url, headers=simulator.headers, timeout=10) as http:
        yield http


# -- data ----------------------------------------------------------------------------------------


def test_project_export_is_deterministic_and_has_every_contract_field(client: httpx.Client, simulator: SimulatorProcess) -> None:
    first = client.get(f"/export/project/{PROJECT}")
    second = client.get(f"/export/project/{PROJECT}")
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert first.json() == second.json() == {"data": data.project_export(PROJECT, simulator.seed)}

    body = first.json()["data"]
    project = body["project"]
    assert set(PROJECT_FIELDS) <= project.keys()
    assert project["projectId"] == PROJECT and isinstance(project["projectId"], int)
    assert set(CUSTOMER_FIELDS) <= project["customerInformation"].keys()
    assert set(ADDRESS_FIELDS) <= project["address"].keys()
    for email in project["customerInformation"]["emails"]:
        assert email.keys() == {"emailAddress", "primary"} and "@" in email["emailAddress"]
    for phone in project["customerInformation"]["phones"]:
        assert phone.keys() == {"phoneNumber", "phoneCountryCode"}
    aware(project["createdDate"])
    assert body["companyName"]
    assert body["teamMembers"] and sum(m["primaryContact"] for m in body["teamMembers"]) == 1
    for member in body["teamMembers"]:
        assert member.keys() == {"userName", "primaryContact", "mfn"}
        assert "@" in member["userName"] and member["mfn"] == project["mfn"]


def test_data_is_realistic_across_many_projects() -> None:
    """Optional fields are sometimes null, dates parse, emails sometimes lack a primary flag."""
    exports = [data.project_export(p, 7)["project"] for p in range(5_000_001, 5_000_201)]
    for field in ("secondaryNumber", "dateContacted", "plannedInspectionDate", "customAttribute3", "yearBuilt"):
        nulls = sum(e[field] is None for e in exports)
        assert 0 < nulls < len(exports), field
    for export in exports:
        for field in ("createdDate", "dateOfLoss", "dateReceived"):
            aware(export[field])
        assert aware(export["dateOfLoss"]) < aware(export["createdDate"])
    styles = Counter("Z" if e["createdDate"].endswith("Z") else "offset" for e in exports)
    assert styles["Z"] > styles["offset"] > 0
    emails = [e["customerInformation"]["emails"] for e in exports]
    assert any(not e for e in emails) and any(len(e) == 2 for e in emails)
    assert any(e and not any(x["primary"] for x in e) for e in emails)
    assert len({e["mfn"] for e in exports}) == len(exports)


def test_same_id_and_seed_give_the_same_data_other_seed_other_values() -> None:
    assert data.project_export(PROJECT, 7) == data.project_export(PROJECT, 7)
    assert data.project_export(PROJECT, 7) != data.project_export(PROJECT, 8)
    assert data.task_assignment(PROJECT * 1000 + 1, 7) == data.task_assignment(PROJECT * 1000 + 1, 7)
    # which children exist depends on the project id only, so streams work with any seed
    assert [m["mediaID"] for m in data.project_media(PROJECT, 7)] == [m["mediaID"] for m in data.project_media(PROJECT, 8)]
    # a returned body is a copy: changing it does not change what is served next
    data.project_export(PROJECT, 7)["project"]["mfn"] = "changed"
    assert data.project_export(PROJECT, 7)["project"]["mfn"] != "changed"


def test_id_scheme_children_encode_their_project() -> None:
    children = project_children(PROJECT)
    assert children.media_ids and children.assignment_ids and children.video_collaboration_ids
    for child in children.media_ids + children.assignment_ids + children.video_collaboration_ids:
        assert project_of(child) == PROJECT and project_of(str(child)) == PROJECT
    assert children.has_media(children.media_ids[-1]) and not children.has_media(children.media_ids[-1] + 1)
    assert not children.has_media(PROJECT * 1000) and not children.has_media("x")
    sizes = [len(project_children(p).media_ids) for p in range(5_000_001, 5_000_201)]
    big = [s for s in sizes if s >= 25]
    assert 5 <= len(big) <= 40 and statistics.median(sizes) <= 8


def test_media_all_or_filtered_by_media_ids(client: httpx.Client, simulator: SimulatorProcess) -> None:
    media_ids = project_children(PROJECT).media_ids
    everything = client.get(f"/export/project/{PROJECT}/media").json()["data"]
    assert [m["mediaID"] for m in everything] == list(media_ids)
    assert everything == data.project_media(PROJECT, simulator.seed)
    for item in everything:
        assert set(MEDIA_FIELDS) <= item.keys()
        assert item["taskAssignmentId"] is None or project_of(item["taskAssignmentId"]) == PROJECT
        aware(item["takenDate"])

    wanted = [media_ids[0], media_ids[-1], project_children(OTHER).media_ids[0]]
    response = client.get(f"/export/project/{PROJECT}/media", params={"mediaIds": ",".join(map(str, wanted))})
    assert sorted(m["mediaID"] for m in response.json()["data"]) == sorted({media_ids[0], media_ids[-1]})
    assert response.json()["data"][0] == data.media_item(media_ids[0], simulator.seed)

    assert client.get(f"/export/project/{PROJECT}/media", params={"mediaIds": "1,x"}).status_code == 400


def test_task_assignment_full_with_and_without_external_link(client: httpx.Client, simulator: SimulatorProcess) -> None:
    assignment = project_children(PROJECT).assignment_ids[0]
    response = client.get(f"/customTasks/assignment/{assignment}", params={"full": "true"})
    body = response.json()
    assert response.status_code == 200 and body == data.task_assignment(assignment, simulator.seed)
    assert set(TASK_FIELDS) <= body.keys()
    assert set(CUSTOM_TASK_FIELDS) <= body["customTask"].keys()
    assert body["assignmentId"] == assignment and body["projectId"] == PROJECT
    assert body["customTask"]["taskId"] == body["taskId"]
    assert body["mfn"] == data.project_export(PROJECT, simulator.seed)["project"]["mfn"]

    missing = PROJECT * 1000 + len(project_children(PROJECT).assignment_ids) + 1
    assert client.get(f"/customTasks/assignment/{missing}", params={"full": "true"}).status_code == 404

    bodies = [data.task_assignment(a, 7) for p in range(5_000_001, 5_000_151) for a in project_children(p).assignment_ids]
    links = [b["externalLinkData"] for b in bodies if "externalLinkData" in b]
    assert 0.3 <= len(links) / len(bodies) <= 0.5
    assert all(set(LINK_FIELDS) <= link.keys() for link in links)
    with_email = sum(link["email"] is not None for link in links)
    assert 0 < with_email < len(links)
    assert len({link["linkId"] for link in links}) == len(links)


def test_video_collaboration_report_for_a_project(client: httpx.Client, simulator: SimulatorProcess) -> None:
    response = client.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": PROJECT})
    items = response.json()["data"]
    assert response.status_code == 200 and items == data.video_collaborations(PROJECT, simulator.seed)
    assert [i["videoCollaborationId"] for i in items] == list(project_children(PROJECT).video_collaboration_ids)
    for item in items:
        assert set(VIDEO_FIELDS) <= item.keys()
        assert item["claimId"] == PROJECT and isinstance(item["sessionCount"], int)
        assert isinstance(item["totalTimeSeconds"], float)
    as_text = client.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": str(PROJECT)})
    assert as_text.json()["data"] == items
    assert client.post("/data", json={"reportType": "TASKS", "projectId": PROJECT}).status_code == 400
    assert client.post("/data", content=b"not json").status_code == 400


# -- auth ----------------------------------------------------------------------------------------


def test_missing_or_wrong_credentials_get_401(simulator: SimulatorProcess) -> None:
    assert simulator.token == DEFAULT_TOKEN == make_token("claimx", "simulator")
    with httpx.Client(base_url=simulator.url, timeout=10) as anonymous:
        missing = anonymous.get(f"/export/project/{PROJECT}")
        wrong = anonymous.get(f"/export/project/{PROJECT}", headers={"Authorization": f"Basic {make_token('claimx', 'nope')}"})
        bearer = anonymous.get(f"/export/project/{PROJECT}", headers={"Authorization": f"Bearer {simulator.token}"})
        video = anonymous.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": PROJECT})
        right = anonymous.get(f"/export/project/{PROJECT}", headers={"Authorization": f"basic {simulator.token}"})
    assert [r.status_code for r in (missing, wrong, bearer, video)] == [401, 401, 401, 401]
    assert missing.headers["www-authenticate"].startswith("Basic")
    assert right.status_code == 200


# -- latency -------------------------------------------------------------------------------------


async def test_latency_is_added_without_blocking_other_requests(api: SimulatorProcess) -> None:
    api.set_faults(latency_ms=150, jitter_ms=20)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=10) as http:
        await http.get("/_health")

        async def timed(project: int) -> float:
            started = time.perf_counter()
            response = await http.get(f"/export/project/{project}")
            assert response.status_code == 200
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        durations = await asyncio.gather(*(timed(5_000_001 + i) for i in range(20)))
        wall_ms = (time.perf_counter() - started) * 1000
    assert min(durations) >= 150 and statistics.median(durations) >= 150
    assert wall_ms < 20 * 150 / 3, "latency must be an asyncio sleep, not a blocking one"


def test_slow_share_adds_slow_ms(api: SimulatorProcess, client: httpx.Client) -> None:
    api.set_faults(slow_rate=1.0, slow_ms=120)
    started = time.perf_counter()
    assert client.get(f"/export/project/{PROJECT}").status_code == 200
    assert time.perf_counter() - started >= 0.12
    api.set_faults(slow_rate=0.0)
    started = time.perf_counter()
    client.get(f"/export/project/{PROJECT}")
    assert time.perf_counter() - started < 0.12


def test_sequential_keep_alive_requests_are_fast(client: httpx.Client) -> None:
    """Guards TCP_NODELAY: with Nagle + delayed ACK every answer would take ~40 ms."""
    client.get("/_health")
    started = time.perf_counter()
    for i in range(100):
        assert client.get(f"/export/project/{5_000_001 + i}").status_code == 200
    assert time.perf_counter() - started < 2.0


# -- faults --------------------------------------------------------------------------------------


def test_error_rate_one_answers_every_call_with_5xx(api: SimulatorProcess, client: httpx.Client) -> None:
    api.set_faults(error_rate=1.0)
    codes = [client.get(f"/export/project/{5_000_001 + i}").status_code for i in range(30)]
    codes.append(client.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": PROJECT}).status_code)
    assert set(codes) == {500, 503}
    stats = api.stats()
    assert stats["status"] == {"500": codes.count(500), "503": codes.count(503)}


def test_partial_error_rate_is_a_share(api: SimulatorProcess, client: httpx.Client) -> None:
    api.set_faults(error_rate=0.3)
    codes = Counter(client.get(f"/export/project/{PROJECT}").status_code for _ in range(200))
    assert 30 <= codes[500] + codes[503] <= 90 and codes[200] == 200 - codes[500] - codes[503]


def test_rate_limit_carries_retry_after(api: SimulatorProcess, client: httpx.Client) -> None:
    api.set_faults(rate_limit_rate=1.0, retry_after_s=7)
    response = client.get(f"/customTasks/assignment/{PROJECT * 1000 + 1}", params={"full": "true"})
    assert response.status_code == 429 and response.headers["retry-after"] == "7"


def test_not_found_ids_answer_404_on_every_call_of_the_project(api: SimulatorProcess, client: httpx.Client) -> None:
    api.set_faults(not_found_ids=[PROJECT])
    children = project_children(PROJECT)
    assert client.get(f"/export/project/{PROJECT}").status_code == 404
    assert client.get(f"/export/project/{PROJECT}/media").status_code == 404
    assert client.get(f"/customTasks/assignment/{children.assignment_ids[0]}", params={"full": "true"}).status_code == 404
    assert client.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": PROJECT}).status_code == 404
    assert client.get(f"/export/project/{OTHER}").status_code == 200


async def test_timeout_hangs_until_the_client_gives_up(api: SimulatorProcess) -> None:
    api.set_faults(timeout_rate=1.0, timeout_s=30)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=0.3) as http:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"/export/project/{PROJECT}")
        assert time.perf_counter() - started < 2
    # the simulator notices the disconnect and stops waiting long before its 30 s
    deadline = time.monotonic() + 5
    while api.stats()["status"].get("504") != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert api.stats()["status"] == {"504": 1}

    api.set_faults(timeout_s=0.2)
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=5) as http:
        response = await http.get(f"/export/project/{PROJECT}")
    assert response.status_code == 504


# -- counts and control --------------------------------------------------------------------------


def test_stats_count_calls_statuses_and_project_exports(api: SimulatorProcess, client: httpx.Client) -> None:
    assert api.stats()["total"] == 0
    client.get(f"/export/project/{PROJECT}")
    client.get(f"/export/project/{PROJECT}")
    client.get(f"/export/project/{OTHER}")
    client.get(f"/export/project/{PROJECT}/media")
    client.get(f"/customTasks/assignment/{PROJECT * 1000 + 1}", params={"full": "true"})
    client.post("/data", json={"reportType": "VIDEO_COLLABORATION", "projectId": PROJECT})
    httpx.get(f"{api.url}/export/project/{OTHER}")  # no credentials: 401, still counted
    stats = api.stats()
    assert {k: stats[k] for k in ("project", "media", "task", "video", "total")} == {
        "project": 4, "media": 1, "task": 1, "video": 1, "total": 7,
    }
    assert stats["status"] == {"200": 6, "401": 1}
    assert stats["by_call"]["project"] == {"200": 3, "401": 1}
    assert stats["project_by_id"] == {str(PROJECT): 2, str(OTHER): 2}

    reset = api.reset_stats()
    assert reset["total"] == 0 and reset["project_by_id"] == {} and api.stats()["project"] == 0


def test_put_faults_changes_settings_at_runtime_and_validates(api: SimulatorProcess, client: httpx.Client) -> None:
    assert api.faults()["error_rate"] == 0.0
    changed = api.set_faults(latency_ms=5, not_found_ids="5000009,5000010")
    assert changed["latency_ms"] == 5 and changed["not_found_ids"] == [5_000_009, 5_000_010]
    assert client.get("/export/project/5000010").status_code == 404

    for bad in ({"error_rate": 1.5}, {"no_such_fault": 1}, {"latency_ms": -1}):
        response = client.put("/_faults", json=bad)
        assert response.status_code == 422, bad
    assert client.put("/_faults", json=[1, 2]).status_code == 400
    assert api.faults()["latency_ms"] == 5  # a rejected change leaves the settings alone

    restored = api.reset_faults()
    assert restored["latency_ms"] == 0 and restored["not_found_ids"] == []
    assert client.get("/export/project/5000010").status_code == 200


def test_health_and_control_need_no_auth(simulator: SimulatorProcess) -> None:
    health = httpx.get(f"{simulator.url}/_health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "seed": simulator.seed}
    assert httpx.get(f"{simulator.url}/_stats").status_code == 200
    assert httpx.get(f"{simulator.url}/no/such/path", headers=simulator.headers).status_code == 404


def test_api_settings_point_at_the_simulator(simulator: SimulatorProcess) -> None:
    settings = simulator.api_settings(timeout_s=2)
    assert settings.url == simulator.url and settings.timeout_s == 2
    assert settings.resolved_token().get_secret_value() == simulator.token


# -- processes -----------------------------------------------------------------------------------


def test_simulator_process_with_constructor_faults_and_own_credentials() -> None:
    with SimulatorProcess(seed=11, user="adjuster", password="s3cret", error_rate=1.0, not_found_ids=[OTHER]) as sim:
        assert sim.running and sim.port > 0 and sim.seed == 11
        assert sim.token == make_token("adjuster", "s3cret")
        assert httpx.get(f"{sim.url}/export/project/{PROJECT}", headers=sim.headers).status_code in (500, 503)
        assert httpx.get(f"{sim.url}/export/project/{OTHER}", headers=sim.headers).status_code == 404
        default_auth = {"Authorization": f"Basic {DEFAULT_TOKEN}"}
        assert httpx.get(f"{sim.url}/export/project/{PROJECT}", headers=default_auth).status_code == 401
        sim.set_faults(error_rate=0.0)
        body = httpx.get(f"{sim.url}/export/project/{PROJECT}", headers=sim.headers).json()
        assert body == {"data": data.project_export(PROJECT, 11)}
    assert not sim.running


def test_simulator_process_reports_a_bad_setting() -> None:
    with pytest.raises(ValueError):
        SimulatorProcess(error_rate=2.0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bad = SimulatorProcess(port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(SimulatorError, match="cannot listen"):
            bad.start()
    assert time.monotonic() - started < 10 and not bad.running


def test_cli_simulate_api_prints_url_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kafka_pipeline", "simulate-api", "--port", "0", "--seed", "3", "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith(URL_PREFIX)
        url = line[len(URL_PREFIX):]
        assert httpx.get(f"{url}/_health").json() == {"status": "ok", "seed": 3}
        assert httpx.get(f"{url}/_faults").json()["latency_ms"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr.read() == ""


def test_cli_rejects_bad_fault_option_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kafka_pipeline", "simulate-api", "--port", "0", "--error-rate", "3"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--error-rate" in result.stderr


async def test_stop_lets_go_of_requests_held_by_a_timeout_fault() -> None:
    sim = SimulatorProcess(timeout_rate=1.0, timeout_s=30).start()
    try:
        async with httpx.AsyncClient(base_url=sim.url, headers=sim.headers, timeout=20) as http:
            held = asyncio.ensure_future(http.get(f"/export/project/{PROJECT}"))
            await asyncio.sleep(0.3)
            assert not held.done()
            started = time.monotonic()
            await asyncio.to_thread(sim.stop)
            response = await held
        assert time.monotonic() - started < 3
        assert response.status_code == 503
    finally:
        sim.stop()
