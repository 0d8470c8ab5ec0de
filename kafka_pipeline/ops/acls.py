"""Least-privilege broker ACLs: which principal reads and writes which topic and group.

Anyone who can produce to the entity-rows topic writes rows, to the retry topic chooses what is
sent back and when, to the DLQ forges letters for `dlq replay`. The broker closes those doors:
with an authorizer (Kafka's `StandardAuthorizer`) and `allow.everyone.if.no.acl.found=false`,
each worker runs as its own principal with exactly these ACLs (LITERAL names, any host):

==================  =======================================================================
principal           allowed
==================  =======================================================================
enrich              Read events; Write entity-rows, retry, DLQ; Read its group
writer              Read entity-rows; Write DLQ; Read its group
retry-scheduler     Read retry; Write events (the messages it sends back), DLQ; Read its group
operator            Read and Write DLQ (replay markers), Read retry, events and entity-rows
                    (`status` reads where each ends, `replay --from-topic`), Write events and
                    entity-rows (`dlq replay`, `replay`), Describe the four topics; Read the
                    purge group and the workers' groups (`dlq purge`, `reset-offsets`, `status`)
source              Write events (the system that publishes ClaimX events)
==================  =======================================================================

Write and Read imply Describe, and Write on any topic implies IdempotentWrite on the cluster;
topics are created beforehand by an administrator (a worker creates only the topics it cannot
see, and with these ACLs it sees all of its own). `acl_lines` prints them as `kafka-acls.sh`
commands; `apply_acls` creates them through the Kafka protocol (CreateAcls) as the principal of
the given settings, which must be allowed to alter the cluster's ACLs (a super user).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from kafka_pipeline.config import Settings
from kafka_pipeline.errors import UserError
from kafka_pipeline.kafka.clients import connection_kwargs, first_contact
from kafka_pipeline.ops.dlq import purge_group

Role = Literal["enrich", "writer", "retry-scheduler", "operator", "source"]
ROLES: tuple[Role, ...] = ("enrich", "writer", "retry-scheduler", "operator", "source")
DEFAULT_PRINCIPALS: dict[Role, str] = {
    "enrich": "User:kafka-pipeline-enrich",
    "writer": "User:kafka-pipeline-writer",
    "retry-scheduler": "User:kafka-pipeline-retry-scheduler",
    "operator": "User:kafka-pipeline-operator",
    "source": "User:claimx-source",
}
Resource = Literal["topic", "group"]
Operation = Literal["Read", "Write", "Describe"]

# Kafka's protocol codes (org.apache.kafka.common.resource / acl)
_RESOURCE_CODE = {"topic": 2, "group": 3}
_OPERATION_CODE = {"Read": 3, "Write": 4, "Describe": 8}
_LITERAL, _ALLOW = 3, 3


class AclFailed(UserError):
    """The broker did not create an ACL (not authorized, no authorizer configured, ...)."""


@dataclass(frozen=True, order=True)
class Acl:
    principal: str
    resource: Resource
    name: str
    operation: Operation


def pipeline_acls(settings: Settings, principals: Mapping[Role, str] | None = None) -> list[Acl]:
    """Every ACL the pipeline needs (module docstring), for the topics and groups of `settings`."""
    who = {**DEFAULT_PRINCIPALS, **(principals or {})}
    k = settings.kafka
    topics = (k.events_topic, k.entity_rows_topic, k.retry_topic, k.dlq_topic)
    worker_groups = (settings.enrich.group_id, settings.writer.group_id, settings.retry.group_id)
    grants: dict[Role, list[tuple[Resource, str, Operation]]] = {
        "enrich": [("topic", k.events_topic, "Read"), ("topic", k.entity_rows_topic, "Write"), ("topic", k.retry_topic, "Write"),
                   ("topic", k.dlq_topic, "Write"), ("group", settings.enrich.group_id, "Read")],
        "writer": [("topic", k.entity_rows_topic, "Read"), ("topic", k.dlq_topic, "Write"), ("group", settings.writer.group_id, "Read")],
        "retry-scheduler": [("topic", k.retry_topic, "Read"), ("topic", k.events_topic, "Write"), ("topic", k.dlq_topic, "Write"),
                            ("group", settings.retry.group_id, "Read")],
        "operator": [("topic", k.dlq_topic, "Read"), ("topic", k.dlq_topic, "Write"), ("topic", k.retry_topic, "Read"),
                     # status reads where each topic ends (a fetch of its last batch), replay --from-topic reads events
                     ("topic", k.events_topic, "Read"), ("topic", k.entity_rows_topic, "Read"),
                     ("topic", k.events_topic, "Write"), ("topic", k.entity_rows_topic, "Write"),
                     *(("topic", t, "Describe") for t in topics),
                     ("group", purge_group(k.dlq_topic), "Read"), *(("group", g, "Read") for g in worker_groups)],
        "source": [("topic", k.events_topic, "Write")],
    }
    return sorted({Acl(who[role], resource, name, op) for role, granted in grants.items() for resource, name, op in granted})


def acl_lines(acls: Iterable[Acl], *, bootstrap_servers: str, command_config: str | None = None) -> list[str]:
    """The ACLs as `kafka-acls.sh` commands, one per principal, resource and operation."""
    lines = []
    for acl in sorted(acls):
        argv = ["kafka-acls.sh", "--bootstrap-server", bootstrap_servers]
        if command_config:
            argv += ["--command-config", command_config]
        argv += ["--add", "--allow-principal", acl.principal, "--operation", acl.operation,
                 f"--{acl.resource}", acl.name, "--resource-pattern-type", "literal"]
        lines.append(shlex.join(argv))
    return lines


async def apply_acls(settings: Settings, acls: Iterable[Acl]) -> int:
    """Create the ACLs on the broker (idempotent: an ACL that exists is not duplicated); how many."""
    admin = AIOKafkaAdminClient(**connection_kwargs(settings.kafka))
    with first_contact(settings.kafka):
        await admin.start()
    created = 0
    try:
        for acl in acls:
            request = CreateAclsRequest(_RESOURCE_CODE[acl.resource], acl.name, _LITERAL, acl.principal, "*",
                                        _OPERATION_CODE[acl.operation], _ALLOW)
            response = await admin._send_request(request)  # noqa: SLF001 - aiokafka has no create_acls yet
            for error_code, error_message in response.creation_responses:
                if error_code:
                    raise AclFailed(f"the broker refused the ACL {acl.operation} {acl.resource} {acl.name} for {acl.principal}: "
                                    f"error {error_code} {error_message or ''}".rstrip())
            created += 1
    finally:
        await admin.close()
    return created


def parse_principal(text: str) -> tuple[Role, str]:
    """`ROLE=User:name` (an argparse type's core): ValueError naming what is expected."""
    role, sep, principal = text.partition("=")
    if not sep or role not in ROLES or not principal.startswith("User:") or len(principal) <= len("User:"):
        raise ValueError(f"expected ROLE=User:NAME with ROLE one of {', '.join(ROLES)}, got {text[:80]!r}")
    return role, principal
