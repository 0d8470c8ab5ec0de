"""Deterministic, realistic ClaimX API bodies: pure functions of an id and a seed.

Every value comes from `random.Random(f"{seed}:{kind}:{id}")`, so a test computes the body the
simulator serves by calling the same function with the same id and seed. Field names, shapes and
types follow `claimx-domain.md` section 2: camelCase, numeric ids as JSON numbers, ISO-8601
timestamps (mostly `Z`, some with milliseconds, some with a US offset), optional fields
sometimes null. Values shared between calls (a project's `mfn`, its team, its company) come from
the project, so a task or video collaboration agrees with its project export.

Public functions return fresh objects (callers may mutate them):

- `project_export(project_id, seed)` -> the object under `data` of `GET /export/project/{id}`
- `media_item(media_id, seed)` / `project_media(project_id, seed, media_ids=None)`
- `task_assignment(assignment_id, seed)` -> the body of `GET /customTasks/assignment/{id}`
- `video_collaboration(video_id, seed)` / `video_collaborations(project_id, seed)`
"""

from __future__ import annotations

import copy
import random
import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from kafka_pipeline.simulator.ids import project_children, project_of

DEFAULT_SEED = 7

# Claims in the simulated book were opened between these instants.
_CREATED_FROM = datetime(2025, 9, 1, tzinfo=UTC)
_CREATED_SPAN_S = int((datetime(2026, 3, 31, tzinfo=UTC) - _CREATED_FROM).total_seconds())

_FIRST_NAMES = (
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard "
    "Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Lisa Matthew Nancy Anthony Betty Mark "
    "Sandra Donald Ashley Steven Emily Andrew Kimberly Joshua Donna Kevin Michelle Brian Carol "
    "Luis Maria Wei Priya Ahmed Fatima Olga Kenji"
).split()
_LAST_NAMES = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell O'Brien Kowalski"
).split()

# (city, state, county, zip prefix, utc offset hours in winter, latitude, longitude)
_PLACES = (
    ("Houston", "TX", "Harris", "770", -6, 29.7604, -95.3698),
    ("Dallas", "TX", "Dallas", "752", -6, 32.7767, -96.7970),
    ("Tampa", "FL", "Hillsborough", "336", -5, 27.9506, -82.4572),
    ("Miami", "FL", "Miami-Dade", "331", -5, 25.7617, -80.1918),
    ("Orlando", "FL", "Orange", "328", -5, 28.5384, -81.3789),
    ("Atlanta", "GA", "Fulton", "303", -5, 33.7490, -84.3880),
    ("Charlotte", "NC", "Mecklenburg", "282", -5, 35.2271, -80.8431),
    ("New Orleans", "LA", "Orleans", "701", -6, 29.9511, -90.0715),
    ("Oklahoma City", "OK", "Oklahoma", "731", -6, 35.4676, -97.5164),
    ("Denver", "CO", "Denver", "802", -7, 39.7392, -104.9903),
    ("Phoenix", "AZ", "Maricopa", "850", -7, 33.4484, -112.0740),
    ("Sacramento", "CA", "Sacramento", "958", -8, 38.5816, -121.4944),
    ("Columbus", "OH", "Franklin", "432", -5, 39.9612, -82.9988),
    ("Minneapolis", "MN", "Hennepin", "554", -6, 44.9778, -93.2650),
    ("Charleston", "SC", "Charleston", "294", -5, 32.7765, -79.9311),
)
_STREETS = "Oak Maple Cedar Pine Elm Lakeview Sunset Willow Highland Magnolia Park Ridge River Hillcrest".split()
_STREET_SUFFIXES = ("St", "Ave", "Dr", "Ln", "Blvd", "Ct", "Rd", "Way")

# (company name, company id, claim number prefix)
_COMPANIES = (
    ("Harborline Mutual Insurance", 1201, "HM"),
    ("Prairie State Property & Casualty", 1307, "PS"),
    ("Coastal Shield Insurance Co.", 1422, "CS"),
    ("Summit Ridge Underwriters", 1538, "SR"),
    ("Bluewater Home Assurance", 1645, "BW"),
    ("Keystone Family Insurance", 1759, "KF"),
)

_LOSSES = {
    "Water": ("Burst pipe", "Appliance leak", "Roof leak", "Sewer backup", "Frozen pipe"),
    "Wind": ("Hurricane", "Tornado", "Windstorm"),
    "Hail": ("Hailstorm",),
    "Fire": ("Kitchen fire", "Electrical fire", "Wildfire smoke"),
    "Theft": ("Burglary", "Vandalism"),
    "Falling Object": ("Tree fall", "Debris impact"),
}
_LOSS_ROOMS = ("kitchen", "basement", "master bedroom", "living room", "garage", "attic", "bathroom", "roof")
_STATUSES = (("Open", 45), ("In Progress", 25), ("Pending Inspection", 10), ("Closed", 15), ("Reopened", 5))
_BUSINESS_NAMES = ("Riverside Bakery LLC", "Oak Street Dental", "Summit Auto Repair", "Lakeview Apartments HOA")

_TASK_CATALOG = (
    "Initial Inspection", "Photo Documentation", "Contents Inventory", "Water Mitigation Report",
    "Roof Inspection", "Policyholder Self-Service Photos", "Final Walkthrough", "Proof of Loss",
    "Drying Log", "Contractor Estimate Upload", "Mold Assessment", "Receipts Upload",
)
TEMPLATE_ID_BASE = 3100  # task template ids are TEMPLATE_ID_BASE + catalog index

_MEDIA_DESCRIPTIONS = (
    "Water stain on ceiling", "Damaged drywall near baseboard", "Roof shingles missing",
    "Hail impact on gutter", "Standing water in basement", "Smoke damage on cabinets",
    "Broken window, rear elevation", "Fallen tree on fence", "Front elevation",
    "Serial plate of water heater", "Moisture meter reading", "Damaged flooring",
)
_MEDIA_COMMENTS = (
    "Taken by policyholder", "Retake requested, image blurry", "Pre-mitigation",
    "Post-mitigation", "Matches estimate line 14", "See also previous photo",
)


@dataclass(frozen=True)
class _TeamMember:
    user_id: int
    first_name: str
    last_name: str
    email: str
    primary: bool


@dataclass(frozen=True)
class _Project:
    """A project export plus the facts other calls need (kept out of the JSON body)."""

    body: dict[str, Any]
    created: datetime
    utc_offset_h: int
    latitude: float
    longitude: float
    company_id: int
    team: tuple[_TeamMember, ...]

    @property
    def project(self) -> dict[str, Any]:
        return self.body["project"]


def _rng(seed: int | str, kind: str, ident: int | str) -> random.Random:
    return random.Random(f"{seed}:{kind}:{ident}")


def _iso(rng: random.Random, moment: datetime, utc_offset_h: int) -> str:
    """ISO-8601 the way the API writes it: mostly `Z`, some with milliseconds, some local offset."""
    style = rng.random()
    moment = moment.astimezone(UTC)
    if style < 0.7:
        return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.85:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randrange(1000):03d}Z"
    local = moment.replace(microsecond=0).astimezone(timezone(timedelta(hours=utc_offset_h)))
    return local.isoformat()


def _maybe(rng: random.Random, share_null: float, value: Any) -> Any:
    return None if rng.random() < share_null else value


def _weighted(rng: random.Random, pairs: Iterable[tuple[str, int]]) -> str:
    names, weights = zip(*pairs, strict=True)
    return rng.choices(names, weights=weights)[0]


def _phone(rng: random.Random) -> str:
    return f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _personal_email(rng: random.Random, first: str, last: str) -> str:
    domain = rng.choice(("example.com", "example.net", "example.org", "mail.example.com"))
    return f"{_slug(first)}.{_slug(last)}{rng.randint(1, 99)}@{domain}"


@lru_cache(maxsize=8192)
def _project(project_id: int, seed: int | str) -> _Project:
    rng = _rng(seed, "project", project_id)
    city, state, county, zip_prefix, offset, lat, lon = rng.choice(_PLACES)
    company, company_id, claim_prefix = rng.choice(_COMPANIES)
    created = _CREATED_FROM + timedelta(seconds=rng.randrange(_CREATED_SPAN_S))
    year = created.year % 100
    mfn = f"{state}{year:02d}-{rng.randint(100000, 999999)}"

    def when(moment: datetime) -> str:
        return _iso(rng, moment, offset)

    team: list[_TeamMember] = []
    for i in range(rng.randint(1, 3)):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        email = f"{_slug(first)[0]}{_slug(last)}{rng.randint(1, 9)}@{_slug(company)[:14]}.example.com"
        if all(member.email != email for member in team):
            team.append(_TeamMember(rng.randint(60000, 69999), first, last, email, i == 0))

    loss_type = rng.choice(tuple(_LOSSES))
    cause = rng.choice(_LOSSES[loss_type])
    loss_at = created - timedelta(days=rng.randint(1, 30), hours=rng.randint(0, 23), minutes=rng.randint(0, 59))
    received = created + timedelta(minutes=rng.randint(0, 90))
    contacted = _maybe(rng, 0.1, received + timedelta(hours=rng.randint(1, 48)))
    planned = None if contacted is None else _maybe(rng, 0.25, contacted + timedelta(days=rng.randint(1, 7), hours=rng.randint(0, 8)))
    inspected = None if planned is None else _maybe(rng, 0.4, planned + timedelta(hours=rng.randint(0, 48)))
    appointment = None if planned is None else _maybe(rng, 0.3, planned)

    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    business = rng.random() < 0.2
    email_count = rng.choices((0, 1, 2), weights=(10, 65, 25))[0]
    emails = [{"emailAddress": _personal_email(rng, first, last), "primary": False} for _ in range(email_count)]
    if emails and rng.random() < 0.9:  # sometimes no email is marked primary
        emails[rng.randrange(len(emails))]["primary"] = True
    phones = [{"phoneNumber": _phone(rng), "phoneCountryCode": "1"} for _ in range(rng.choices((0, 1, 2), weights=(10, 70, 20))[0])]
    square_feet = rng.randint(800, 4800)

    project = {
        "projectId": project_id,
        "projectNumber": f"{claim_prefix}{rng.randint(10**9, 10**10 - 1)}",
        "mfn": mfn,
        "secondaryNumber": _maybe(rng, 0.2, f"POL-{rng.randint(10**7, 10**8 - 1)}"),
        "createdDate": when(created),
        "status": _weighted(rng, _STATUSES),
        "dateOfLoss": when(loss_at),
        "typeOfLoss": loss_type,
        "causeOfLoss": cause,
        "lossDescription": f"{cause} caused damage to the {rng.choice(_LOSS_ROOMS)} and {rng.choice(_LOSS_ROOMS)}.",
        "yearBuilt": _maybe(rng, 0.15, rng.randint(1925, 2022)),
        "squareFootage": _maybe(rng, 0.1, square_feet + 0.5 if rng.random() < 0.15 else square_feet),
        "dateReceived": when(received),
        "dateContacted": None if contacted is None else when(contacted),
        "plannedInspectionDate": None if planned is None else when(planned),
        "dateInspected": None if inspected is None else when(inspected),
        "appointmentDate": None if appointment is None else when(appointment),
        "customAttribute1": _maybe(rng, 0.3, f"Region {rng.choice(('South', 'Southeast', 'Central', 'West', 'Midwest'))}"),
        "customAttribute2": _maybe(rng, 0.5, f"CAT-{created.year}-{rng.randint(1, 40):02d}"),
        "customAttribute3": _maybe(rng, 0.8, rng.choice(("Desk adjust", "Field adjust", "Fast track"))),
        "customExternalUniqueId": _maybe(rng, 0.3, f"EXT-{uuid.UUID(int=rng.getrandbits(128), version=4).hex[:12].upper()}"),
        "customerInformation": {
            "firstName": first,
            "lastName": last,
            "customBusinessName": rng.choice(_BUSINESS_NAMES) if business else None,
            "businessLineType": "Commercial" if business else "Personal",
            "emails": emails,
            "phones": phones,
        },
        "address": {
            "street1": f"{rng.randint(10, 9999)} {rng.choice(_STREETS)} {rng.choice(_STREET_SUFFIXES)}",
            "street2": _maybe(rng, 0.8, f"Apt {rng.randint(1, 30)}{rng.choice('ABCD')}"),
            "city": city,
            "stateProvince": state,
            "zipPostcode": f"{zip_prefix}{rng.randint(0, 99):02d}",
            "county": county,
            "country": "US",
        },
    }
    body = {
        "project": project,
        "teamMembers": [{"userName": m.email, "primaryContact": m.primary, "mfn": mfn} for m in team],
        "companyName": company,
    }
    jitter = rng.uniform(-0.05, 0.05)
    return _Project(body, created, offset, round(lat + jitter, 6), round(lon - jitter, 6), company_id, tuple(team))


def project_export(project_id: int | str, seed: int | str = DEFAULT_SEED) -> dict[str, Any]:
    """`{"project": {...}, "teamMembers": [...], "companyName": ...}`: the object the API wraps in `data`."""
    return copy.deepcopy(_project(int(project_id), seed).body)


def media_item(media_id: int | str, seed: int | str = DEFAULT_SEED) -> dict[str, Any]:
    """One media item as `GET /export/project/{id}/media` lists it (any id; see `project_media`)."""
    media_id = int(media_id)
    project_id = project_of(media_id)
    parent = _project(project_id, seed)
    rng = _rng(seed, "media", media_id)
    taken = parent.created + timedelta(days=rng.randint(0, 20), seconds=rng.randrange(86400))
    media_type = _weighted(rng, (("jpg", 60), ("jpeg", 8), ("png", 7), ("heic", 7), ("pdf", 12), ("mp4", 6)))
    stamp = taken.strftime("%Y%m%d_%H%M%S")
    if media_type == "pdf":
        name = f"{rng.choice(('Estimate', 'Invoice', 'Mitigation_Report', 'Receipt'))}_{rng.randint(1, 999)}.pdf"
    elif media_type == "mp4":
        name = f"VID_{stamp}.mp4"
    else:
        name = f"IMG_{stamp}.{media_type}"
    photo = media_type not in ("pdf",)
    located = photo and rng.random() < 0.75
    assignments = project_children(project_id).assignment_ids
    return {
        "mediaID": media_id,
        "taskAssignmentId": rng.choice(assignments) if rng.random() < 0.6 else None,
        "mediaType": media_type,
        "mediaName": name,
        "mediaDescription": _maybe(rng, 0.3, rng.choice(_MEDIA_DESCRIPTIONS)),
        "mediaComment": _maybe(rng, 0.6, rng.choice(_MEDIA_COMMENTS)),
        "latitude": round(parent.latitude + rng.uniform(-0.002, 0.002), 6) if located else None,
        "longitude": round(parent.longitude + rng.uniform(-0.002, 0.002), 6) if located else None,
        "gpsSource": rng.choice(("EXIF", "DEVICE")) if located else None,
        "takenDate": _iso(rng, taken, parent.utc_offset_h),
        "fullDownloadLink": (
            f"https://media.claimx.example.com/v1/projects/{project_id}/media/{media_id}/{name}"
            f"?sig={rng.getrandbits(64):016x}"
        ),
        "expiresAt": (datetime(2026, 6, 30, tzinfo=UTC) + timedelta(seconds=rng.randrange(86400 * 30))).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def project_media(
    project_id: int | str, seed: int | str = DEFAULT_SEED, media_ids: Iterable[int | str] | None = None
) -> list[dict[str, Any]]:
    """The project's media items, all of them or those of `media_ids` that belong to it (in id order)."""
    children = project_children(int(project_id))
    if media_ids is None:
        chosen: Iterable[int] = children.media_ids
    else:
        chosen = sorted({int(m) for m in media_ids if children.has_media(m)})
    return [media_item(m, seed) for m in chosen]


@lru_cache(maxsize=256)
def _template(task_id: int, seed: int | str) -> dict[str, Any]:
    rng = _rng(seed, "template", task_id)
    name = _TASK_CATALOG[(task_id - TEMPLATE_ID_BASE) % len(_TASK_CATALOG)]
    external = rng.random() < 0.5
    author_first, author_last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    modified = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(86400 * 600))
    return {
        "taskId": task_id,
        "compId": rng.choice(_COMPANIES)[1],
        "name": name,
        "description": f"{name} for the claim file",
        "formId": 52000 + task_id,
        "formName": f"{name} Form v{rng.randint(1, 6)}",
        "enabled": rng.random() < 0.95,
        "default": rng.random() < 0.3,
        "isManualDelivery": not external,
        "isExternalLinkDelivery": external,
        "providePortalAccess": rng.random() < 0.5,
        "notifyAssignedSendRecipient": rng.random() < 0.7,
        "notifyAssignedSendRecipientSms": rng.random() < 0.3,
        "notifyAssignedSubject": _maybe(rng, 0.3, f"New task: {name}"),
        "notifyTaskCompleted": rng.random() < 0.6,
        "notifyCompletedSubject": _maybe(rng, 0.4, f"Task completed: {name}"),
        "allowReSubmit": rng.random() < 0.5,
        "autoGeneratePdf": rng.random() < 0.4,
        "modifiedBy": f"{author_first} {author_last}",
        "modifiedById": rng.randint(60000, 69999),
        "modifiedDate": _iso(rng, modified, -6),
    }


def task_assignment(assignment_id: int | str, seed: int | str = DEFAULT_SEED) -> dict[str, Any]:
    """The body of `GET /customTasks/assignment/{id}?full=true`; about 40% carry `externalLinkData`."""
    assignment_id = int(assignment_id)
    project_id = project_of(assignment_id)
    parent = _project(project_id, seed)
    rng = _rng(seed, "task", assignment_id)
    task_id = TEMPLATE_ID_BASE + rng.randrange(len(_TASK_CATALOG))
    template = copy.deepcopy(_template(task_id, seed))
    assignor = rng.choice(parent.team)
    assigned = parent.created + timedelta(days=rng.randint(0, 10), seconds=rng.randrange(86400))
    status = _weighted(rng, (("ASSIGNED", 35), ("IN_PROGRESS", 15), ("COMPLETED", 40), ("CANCELLED", 10)))
    completed = assigned + timedelta(hours=rng.randint(2, 240)) if status == "COMPLETED" else None
    cancelled = assigned + timedelta(hours=rng.randint(1, 120)) if status == "CANCELLED" else None
    body: dict[str, Any] = {
        "assignmentId": assignment_id,
        "taskId": task_id,
        "taskName": template["name"],
        "formId": template["formId"],
        "projectId": project_id,
        "assigneeId": rng.randint(70000, 79999),
        "assignorId": assignor.user_id,
        "assignor": assignor.email,
        "dateAssigned": _iso(rng, assigned, parent.utc_offset_h),
        "dateCompleted": None if completed is None else _iso(rng, completed, parent.utc_offset_h),
        "cancelledDate": None if cancelled is None else _iso(rng, cancelled, parent.utc_offset_h),
        "status": status,
        "stpEnabled": rng.random() < 0.3,
        "mfn": parent.project["mfn"],
        "customTask": template,
    }
    if rng.random() < 0.4:
        customer = parent.project["customerInformation"]
        if rng.random() < 0.7:  # usually the policyholder, sometimes someone else on the claim
            first, last = customer["firstName"], customer["lastName"]
        else:
            first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        code = "".join(rng.choices(string.ascii_letters + string.digits, k=10))
        body["externalLinkData"] = {
            "linkId": 10**12 + assignment_id,
            "linkCode": code,
            "url": f"https://www.claimx.example.com/x/{code}",
            "notificationAccessMethod": _weighted(rng, (("EMAIL", 50), ("SMS", 25), ("EMAIL_AND_SMS", 25))),
            "countryId": 1,
            "stateId": rng.randint(1, 50),
            "email": _personal_email(rng, first, last) if rng.random() < 0.65 else None,
            "firstName": first,
            "lastName": last,
            "phone": _maybe(rng, 0.2, _phone(rng)),
            "phoneCountryCode": "1",
        }
    return body


def video_collaboration(video_collaboration_id: int | str, seed: int | str = DEFAULT_SEED) -> dict[str, Any]:
    """One item of the `VIDEO_COLLABORATION` report."""
    video_id = int(video_collaboration_id)
    project_id = project_of(video_id)
    parent = _project(project_id, seed)
    rng = _rng(seed, "video", video_id)
    rep = rng.choice(parent.team)
    created = parent.created + timedelta(days=rng.randint(0, 14), seconds=rng.randrange(86400))
    sessions = rng.randint(1, 5)
    seconds = round(rng.uniform(120, 3600) * sessions / 2, 1)
    first_call = _maybe(rng, 0.15, created + timedelta(hours=rng.randint(1, 72)))
    spread = timedelta(hours=rng.randint(0, 96) if sessions > 1 else 0, minutes=rng.randint(0, 50))
    last_call = None if first_call is None else first_call + spread
    whole = int(seconds)
    return {
        "videoCollaborationId": video_id,
        "claimId": project_id,
        "mfn": parent.project["mfn"],
        "claimNumber": parent.project["projectNumber"],
        "policyNumber": parent.project["secondaryNumber"],
        "emailUserName": rep.email,
        "claimRepFirstName": rep.first_name,
        "claimRepLastName": rep.last_name,
        "claimRepFullName": _maybe(rng, 0.3, f"{rep.first_name} {rep.last_name}"),
        "numberOfVideos": rng.randint(0, 6),
        "numberOfPhotos": rng.randint(0, 40),
        "numberOfViewers": rng.randint(1, 4),
        "sessionCount": sessions,
        "totalTimeSeconds": seconds,
        "totalTime": f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}",
        "createdDate": _iso(rng, created, parent.utc_offset_h),
        "liveCallFirstSession": None if first_call is None else _iso(rng, first_call, parent.utc_offset_h),
        "liveCallLastSession": None if last_call is None else _iso(rng, last_call, parent.utc_offset_h),
        "companyId": parent.company_id,
        "companyName": parent.body["companyName"],
        "guid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    }


def video_collaborations(project_id: int | str, seed: int | str = DEFAULT_SEED) -> list[dict[str, Any]]:
    """The items `POST /data` returns for a project's `VIDEO_COLLABORATION` report."""
    return [video_collaboration(v, seed) for v in project_children(int(project_id)).video_collaboration_ids]
