"""The ClaimX API simulator and the event generator.

- `ids`: the id scheme (child ids encode their project) shared by simulator and generator;
- `data`: pure functions id + seed -> API body (`project_export`, `media_item`, ...);
- `faults`: latency and fault injection settings;
- `app`: the ASGI app (`create_app`), `DEFAULT_TOKEN`;
- `server`: `serve`, `SimulatorProcess` (a child process on a free port, for tests and `run`);
- `events`: `generate_events` (a realistic event stream as JSON lines), `SAMPLE_EVENTS_PATH`.
"""

from kafka_pipeline.simulator.app import DEFAULT_PASSWORD, DEFAULT_TOKEN, DEFAULT_USER, create_app, make_token
from kafka_pipeline.simulator.data import (
    DEFAULT_SEED,
    media_item,
    project_export,
    project_media,
    task_assignment,
    video_collaboration,
    video_collaborations,
)
from kafka_pipeline.simulator.faults import FaultSettings
from kafka_pipeline.simulator.ids import (
    FIRST_PROJECT_ID,
    ProjectChildren,
    assignment_id,
    media_id,
    project_children,
    project_ids,
    project_of,
    video_collaboration_id,
)
from kafka_pipeline.simulator.server import SimulatorError, SimulatorProcess

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_SEED",
    "DEFAULT_TOKEN",
    "DEFAULT_USER",
    "FIRST_PROJECT_ID",
    "FaultSettings",
    "ProjectChildren",
    "SimulatorError",
    "SimulatorProcess",
    "assignment_id",
    "create_app",
    "make_token",
    "media_id",
    "media_item",
    "project_children",
    "project_export",
    "project_ids",
    "project_media",
    "project_of",
    "task_assignment",
    "video_collaboration",
    "video_collaboration_id",
    "video_collaborations",
]
