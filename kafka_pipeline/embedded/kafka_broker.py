"""Apache Kafka from its Maven jars: one KRaft node (broker and controller in one JVM) on loopback.

The jars come from the repository's pom.xml (`scripts/fetch-kafka-jars.sh` puts them in
`KAFKA_JARS_DIR`, default ~/.cache/kafka-pipeline/kafka-jars). `start()` writes a
server.properties, formats the log directory once (`kafka.tools.StorageTool format`), starts
`kafka.Kafka` and returns when a metadata request lists the broker. With `sasl_ssl=True` it also
opens a SASL_SSL listener (SCRAM-SHA-512, advertised as `localhost` with a certificate for that
name only, signed by a CA made here) next to the PLAINTEXT one. A `data_dir` that was formatted before is reused as it is:
topics and committed offsets survive a restart.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.client import AIOKafkaClient

from kafka_pipeline.embedded.broker import BrokerError, die_with_parent, free_port, wait_for_port
from kafka_pipeline.lifecycle.processes import stop_process

JARS_DIR_ENV = "KAFKA_JARS_DIR"
DEFAULT_JARS_DIR = Path.home() / ".cache" / "kafka-pipeline" / "kafka-jars"
FETCH_HINT = "fetch them with `bash scripts/fetch-kafka-jars.sh` in a checkout of kafka-pipeline (Maven), or set KAFKA_JARS_DIR"
MIN_JAVA = 17
SCRAM_MECHANISM = "SCRAM-SHA-512"
TLS_HOST = "localhost"  # the one name in the SASL_SSL listener's certificate (clients verify it)
# A small heap; C1 only and the serial GC: a third of the start-up time of the JVM defaults,
# and plenty for one local node.
JVM_OPTIONS = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
# WARN and up, plus the "started" line and failed authentications (what the security tests count)
LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
logger.auth.name = org.apache.kafka.common.network.Selector
logger.auth.level = info
"""


def jars_dir() -> Path:
    return Path(os.environ.get(JARS_DIR_ENV) or DEFAULT_JARS_DIR).expanduser()


def kafka_version(jars: Path | None = None) -> str:
    """The broker version of the jars in `jars` (from kafka_2.13-<version>.jar)."""
    folder = jars or jars_dir()
    for jar in sorted(folder.glob("kafka_2.13-*.jar")):
        match = re.fullmatch(r"kafka_2\.13-(\d[\w.-]*)\.jar", jar.name)
        if match:
            return match.group(1)
    raise BrokerError(f"Apache Kafka jars not found in {folder}: {FETCH_HINT}")


def java_binary() -> str:
    """`java` from JAVA_HOME or PATH, at least version 17 (Kafka 4 needs it)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").is_file() else shutil.which("java")
    if java is None:
        raise BrokerError(f"Java {MIN_JAVA}+ is needed for the Apache Kafka broker: none found (install a JDK, e.g. apt-get install openjdk-17-jre-headless)")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"{java} -version failed: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_x" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(f"Java {MIN_JAVA}+ is needed for the Apache Kafka broker; {java} is version {major or 'unknown'}")
    return java


def new_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: a UUID in URL-safe base64 without padding, never
    starting with "-" (the storage tool would read it as an option; Kafka's own ids avoid it too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path  # PEM: what clients trust (`kafka.ssl_cafile`)
    keystore: Path  # PKCS12: the broker's key and certificate chain
    keystore_password: str


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """A throw-away CA and a broker certificate for `hosts` (names and IPs in subjectAltName)."""
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(12)
    alt_names = ",".join(f"IP:{h}" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+", h) else f"DNS:{h}" for h in hosts)
    (folder / "server.ext").write_text(f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\n")
    steps = [
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
         "-subj", "/CN=kafka-pipeline local CA", "-keyout", "ca.key", "-out", "ca.pem"],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/CN={hosts[0]}", "-keyout", "server.key", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "30",
         "-extfile", "server.ext", "-out", "server.pem"],
        ["pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem", "-name", "kafka",
         "-out", "server.p12", "-passout", f"pass:{password}"],
    ]
    for step in steps:
        done = subprocess.run(["openssl", *step], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"openssl {step[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return TlsFiles(folder / "ca.pem", folder / "server.p12", password)


@dataclass
class KafkaBroker:
    host: str = "127.0.0.1"
    port: int = 0  # PLAINTEXT listener (0: a free port)
    data_dir: Path | None = None  # the log directory; None: a temporary one, removed by stop()
    log_path: Path | None = None  # the broker's own log; None: discarded
    sasl_ssl: bool = False  # also open a SASL_SSL listener with one SCRAM-SHA-512 user
    scram_username: str = "kafka-pipeline"
    scram_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    sasl_ssl_port: int = 0
    # more SCRAM users on the SASL_SSL listener (same password as scram_username): one per principal
    extra_scram_users: tuple[str, ...] = ()
    # Kafka's StandardAuthorizer with no access without an ACL; super users: the PLAINTEXT listener
    # (ANONYMOUS: inter-broker, controller and the plain tests) and scram_username
    authorizer: bool = False
    controller_port: int = 0
    tls: TlsFiles | None = field(default=None, init=False, repr=False)
    version: str = field(default="", init=False)
    _work: Path | None = field(default=None, init=False, repr=False)
    _own_data_dir: bool = field(default=False, init=False, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        return f"{TLS_HOST}:{self.sasl_ssl_port}"

    def start(self, timeout_s: float = 60.0) -> KafkaBroker:
        java = java_binary()
        jars = jars_dir()
        self.version = kafka_version(jars)
        self._work = Path(tempfile.mkdtemp(prefix="kafka-broker-"))
        if self.data_dir is None:
            self.data_dir, self._own_data_dir = self._work / "data", True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.controller_port = self.controller_port or free_port(self.host)
        if self.sasl_ssl:
            self.sasl_ssl_port = self.sasl_ssl_port or free_port(self.host)
            self.tls = make_certificates(self._work / "tls", (TLS_HOST,))
        properties = self._work / "server.properties"
        properties.write_text(self.server_properties())
        log4j = self._work / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        base = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}", "-cp", str(jars / "*")]
        try:
            if not (self.data_dir / "meta.properties").exists():
                self._format(base, properties)
            out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            self._process = subprocess.Popen(
                [*base, "kafka.Kafka", str(properties)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )
            deadline = time.monotonic() + timeout_s
            wait_for_port(self.host, self.port, timeout_s, self._process)
            self._wait_for_metadata(deadline)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"Apache Kafka broker failed to start: {exc}{self._log_hint()}") from None
        return self

    def server_properties(self) -> str:
        listeners = [f"PLAINTEXT://{self.host}:{self.port}", f"CONTROLLER://{self.host}:{self.controller_port}"]
        advertised = [f"PLAINTEXT://{self.host}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=1",
            # one node: every internal topic has one replica
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # the first member of a group gets its partitions at once
            "group.initial.rebalance.delay.ms=0",
            # records up to 8 MiB, as clusters that raised the 1 MiB default take (the hostile-input
            # suite sends multi-megabyte events; the workers' own messages stay under 1 MB)
            "message.max.bytes=8388608",
        ]
        if self.sasl_ssl:
            assert self.tls is not None
            listeners.append(f"SASL_SSL://{self.host}:{self.sasl_ssl_port}")
            advertised.append(f"SASL_SSL://{TLS_HOST}:{self.sasl_ssl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
            lines += [
                f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
                f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={self.tls.keystore}",
                f"ssl.keystore.password={self.tls.keystore_password}",
                f"ssl.key.password={self.tls.keystore_password}",
            ]
        if self.authorizer:
            lines += [
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:ANONYMOUS;User:{self.scram_username}",
                "allow.everyone.if.no.acl.found=false",
            ]
        lines += [
            f"listeners={','.join(listeners)}",
            f"advertised.listeners={','.join(advertised)}",
            f"listener.security.protocol.map={','.join(protocols)}",
        ]
        return "\n".join(lines) + "\n"

    def _format(self, base: list[str], properties: Path) -> None:
        command = [*base, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(properties)]
        if self.sasl_ssl:
            for user in (self.scram_username, *self.extra_scram_users):
                command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={self.scram_password}]"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            detail = lines[-1] if lines else f"exit code {done.returncode}"
            raise BrokerError(f"formatting {self.data_dir} failed: {detail.replace(self.scram_password, '***')}")

    def _wait_for_metadata(self, deadline: float) -> None:
        """Until a metadata response lists this broker (the port opens before the broker is unfenced)."""
        async def broker_listed() -> bool:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5_000)
            try:
                await client.bootstrap()
                return bool(client.cluster.brokers())
            except Exception:  # noqa: BLE001 - not ready yet: ask again
                return False
            finally:
                await client.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works inside a running event loop too
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise BrokerError(f"process exited with code {self._process.returncode}")
                if pool.submit(asyncio.run, broker_listed()).result():
                    return
                time.sleep(0.1)
        raise BrokerError(f"no metadata from {self.bootstrap_servers} in time")

    def _log_hint(self) -> str:
        return f" (broker log: {self.log_path})" if self.log_path else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout_s)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)  # holds the temporary data dir too
            self._work = None
        if self._own_data_dir:
            self.data_dir, self._own_data_dir = None, False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
