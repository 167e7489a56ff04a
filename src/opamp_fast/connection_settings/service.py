"""Keeps every agent on this instance offered the connection settings operators chose, and
issues client certificates.

* **Offers in memory.** Group settings and agents' overrides are loaded from Postgres with the
  configuration directory (``ConfigService`` calls :meth:`ConnectionSettingsService.load` before
  it re-resolves the agents, so a change arrives with a ``configs`` notice). One
  ``SettingsOffer`` is built per distinct effective settings and shared by every agent they
  apply to; an agent holding a certificate from us gets an offer of its own naming its serial.
  :meth:`ConnectionSettingsService.assign` (run when an agent comes online, its description or
  labels change, or the settings change) is a few dict lookups: no database round trip on the
  OpAMP path.
* **Certificates.** A CSR is checked on the event loop when it arrives (``ca.AgentCA.check``:
  a bad one is refused in the reply), then queued (bounded; one per agent at a time) for a few
  workers that verify and sign it in worker threads, store it (``agent_certificates``, with a
  ``certificates`` notice carrying its serial to every instance) and hand it to the agent:
  pushed at once over WebSocket, in the next poll's reply over HTTP. An agent asking again with
  the key of its current certificate, while that one is far from expiry, gets the stored
  certificate back instead of a new one (a restarted server does not issue again). A rotation
  (``POST /api/agents/{id}/rotate-certificate``) makes a new key and certificate the same way;
  that key is held in memory until it is delivered, never stored.
* **Statuses.** The ``ConnectionSettingsStatus`` agents report is coalesced per agent on the
  event loop and written in batches every ``flush_interval_s`` from a worker thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from psycopg_pool import PoolTimeout

from ..protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    ERROR_BAD_REQUEST,
    RemoteProtocolError,
    SettingsOffer,
    SettingsParts,
    error_response,
    format_instance_uid,
    pb,
)
from ..redaction import redact_error_text
from ..storage import settings_queries as sq
from ..ticks import sleep_to_tick
from .ca import AgentCA, CertificateRequest, CertificateRequestError, IssuedCertificate
from .model import ConnectionSettings, build_parts

if TYPE_CHECKING:
    from ..fleet.handler import FleetHandler
    from ..fleet.registry import AgentRecord
    from ..storage import Database

__all__ = ["ConnectionSettingsService", "SettingsStatistics"]

logger = logging.getLogger(__name__)

#: Certificate requests waiting for a worker; beyond it a request is dropped (counted ``busy``).
MAX_QUEUED = 1024
#: Requests verified and signed at once, each in a worker thread.
SIGNERS = 2
#: A certificate expiring within this many days counts as expiring (the metric).
EXPIRING_DAYS = 14
#: How often the expiring certificates are counted, seconds.
EXPIRING_REFRESH_S = 60.0
_STATUS_NAMES = {0: "UNSET", 1: "APPLIED", 2: "APPLYING", 3: "FAILED"}
_EMPTY = ConnectionSettings()


@dataclass(frozen=True, slots=True)
class SettingsStatistics:
    """For metrics: certificates issued, re-delivered and refused (by reason) by this instance;
    fleet-wide, the certificates expiring within ``EXPIRING_DAYS`` (as last counted)."""

    issued_total: int
    redelivered_total: int
    refused_total: dict[str, int]
    expiring: int | None
    queued: int


@dataclass(frozen=True, slots=True)
class _Job:
    uid: bytes
    request: CertificateRequest | None  # None: a rotation (a new key, made here)


class ConnectionSettingsService:
    """The offers and certificates of this instance; see the module docstring."""

    def __init__(
        self,
        db: Database,
        fleet: FleetHandler,
        *,
        instance_id: str,
        ca: AgentCA | None = None,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._fleet = fleet
        self.instance_id = instance_id
        self.ca = ca
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._default_parts = fleet.policy.settings_offer.parts
        self._heartbeat_s = fleet.policy.heartbeat_interval_s
        self._groups: dict[str, ConnectionSettings] = {}
        self._agents: dict[bytes, ConnectionSettings] = {}
        self._offers: dict[ConnectionSettings, SettingsOffer] = {}  # shared, by settings
        self._serials: dict[bytes, bytes] = {}  # uid -> serial (hex) of its current certificate
        # The group deciding an agent (``ConfigService.deciding_group``); None: no groups.
        self.group_of: Callable[[AgentRecord], str | None] | None = None
        self._jobs: MemoryObjectSendStream[_Job] | None = None
        self._inflight: set[bytes] = set()
        self._statuses: dict[bytes, tuple[bytes, bytes, str, str, float]] = {}
        self.issued_total = 0
        self.redelivered_total = 0
        self.refused_total: dict[str, int] = {}
        self.expiring: int | None = None

    # -- offers (the hot path: event loop, synchronous) -------------------------------------
    def effective(self, record: AgentRecord) -> ConnectionSettings:
        """The settings of the agent's deciding group, with its own override over them."""
        group = None
        if self._groups and self.group_of is not None:
            name = self.group_of(record)
            group = self._groups.get(name) if name is not None else None
        override = self._agents.get(record.uid)
        if group is None:
            return override or _EMPTY
        return group.merged(override)

    def _shared(self, settings: ConnectionSettings) -> SettingsOffer | None:
        if settings.empty:
            return None
        offer = self._offers.get(settings)
        if offer is None:
            offer = self._offers[settings] = SettingsOffer(build_parts(settings, self._heartbeat_s))
        return offer

    def assign(self, record: AgentRecord) -> bool:
        """Set the agent's offer on its state; True when it changed (it is then pushed)."""
        shared = self._shared(self.effective(record))
        serial = self._serials.get(record.uid, b"")
        state = record.state
        current = state.settings_offer
        pending = current.certificate if current is not None else None
        if not serial and pending is None:
            offer = shared
        else:
            parts = shared.parts if shared is not None else self._default_parts
            if current is not None and current.parts is parts and current.serial == serial:
                return False
            keep = pending if current is not None and current.serial == serial else None
            offer = SettingsOffer(parts, serial=serial, certificate=keep)
        if not state.set_settings_offer(offer):
            return False
        self._set_timeout(record)
        return True

    def _parts(self, record: AgentRecord) -> SettingsParts:
        shared = self._shared(self.effective(record))
        return shared.parts if shared is not None else self._default_parts

    def _set_timeout(self, record: AgentRecord) -> None:
        offer = record.state.settings_offer
        interval = offer.heartbeat_interval_s if offer is not None else self._heartbeat_s
        record.timeout_s = self._fleet.registry.agent_timeout_s(interval)

    async def load(self) -> None:
        """Reload the groups' and agents' settings (by ``ConfigService``, before it re-resolves
        the agents)."""
        rows = await self._db.run(sq.load_settings)
        self._groups = {name: ConnectionSettings.from_json(v) for name, v in rows.groups}
        self._agents = {uid: ConnectionSettings.from_json(v) for uid, v in rows.agents}
        self._offers = {}

    def forget(self, uids: list[bytes]) -> None:
        """Agents deleted from the database (their override, certificate and status rows went
        with them): one coming back is offered nothing of theirs."""
        for uid in uids:
            self._agents.pop(uid, None)
            self._serials.pop(uid, None)
            self._statuses.pop(uid, None)

    def group_settings(self, group: str) -> ConnectionSettings | None:
        return self._groups.get(group)

    def serial_of(self, uid: bytes) -> bytes:
        """The serial (hex, as bytes) of the agent's current certificate, b"" for none."""
        return self._serials.get(uid, b"")

    # -- certificate requests (event loop) ---------------------------------------------------
    def check_request(
        self, uid: bytes, capabilities: int, request: pb.ConnectionSettingsRequest
    ) -> CertificateRequest | None:
        """A CSR worth queueing, None when there is none or no agent CA (then it is ignored).
        Raises RemoteProtocolError (answered BadRequest, nothing of the message merged)."""
        csr = request.opamp.certificate_request.csr
        if self.ca is None or not csr:
            return None
        try:
            if not capabilities & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS:
                raise CertificateRequestError(
                    "not_accepted",
                    "certificate request from an agent without AcceptsOpAMPConnectionSettings: "
                    "it could not receive the certificate",
                )
            return self.ca.check(csr, uid)
        except CertificateRequestError as exc:
            self._count_refusal(exc.reason)
            raise RemoteProtocolError(exc.message, kind="certificate_request") from None

    def submit(self, record: AgentRecord, request: CertificateRequest) -> None:
        """Queue a checked CSR of an agent this instance holds (one per agent at a time)."""
        self._enqueue(_Job(record.uid, request))

    def rotate(self, uid: bytes) -> bool:
        """Queue a rotation for an agent held here: False when there is no agent CA, the agent
        is not online here or it does not accept OpAMP connection settings."""
        record = self._fleet.registry.get(uid)
        if self.ca is None or record is None or not record.online:
            return False
        if not record.state.capabilities & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS:
            return False
        return self._enqueue(_Job(uid, None))

    def _enqueue(self, job: _Job) -> bool:
        if job.uid in self._inflight:
            return False
        try:
            if self._jobs is None:
                raise anyio.WouldBlock
            self._jobs.send_nowait(job)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._count_refusal("busy")
            return False
        self._inflight.add(job.uid)
        return True

    def _count_refusal(self, reason: str) -> None:
        self.refused_total[reason] = self.refused_total.get(reason, 0) + 1

    def notice(self, notice: dict[str, Any]) -> None:
        """A ``certificates`` notice: another instance issued a certificate (its serial), or
        asks this one to rotate an agent's certificate. On the event loop, never blocks."""
        uids = [bytes.fromhex(u) for u in notice.get("uids", ())]
        if notice.get("action") == "rotate":
            for uid in uids:
                self.rotate(uid)
            return
        serial = str(notice.get("serial", "")).encode()
        for uid in uids:
            if serial and self._serials.get(uid) != serial:
                self._serials[uid] = serial
                record = self._fleet.registry.get(uid)
                if record is not None and record.online and self.assign(record):
                    self._fleet.push(record)

    # -- statuses ---------------------------------------------------------------------------
    def on_status(self, uid: bytes, status: pb.ConnectionSettingsStatus) -> None:
        """The agent reported another ConnectionSettingsStatus (event loop, O(1))."""
        name = _STATUS_NAMES.get(int(status.status), str(int(status.status)))
        error = redact_error_text(status.error_message[:4096])
        self._statuses[uid] = (uid, bytes(status.last_connection_settings_hash), name, error,
                               self._clock())  # fmt: skip

    async def flush_statuses(self) -> None:
        batch, self._statuses = self._statuses, {}
        if not batch:
            return
        try:
            await self._db.run(lambda conn: sq.write_statuses(conn, list(batch.values())))
        except BaseException:
            for uid, row in batch.items():  # keep what is newer
                self._statuses.setdefault(uid, row)
            raise

    # -- the service ------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the serials of current certificates, then serve the certificate queue, write
        statuses and count expiring certificates until cancelled."""
        if self.ca is not None:
            rows = await self._db.run(sq.current_serials)
            self._serials = {uid: serial.encode() for uid, serial in rows}
        send, receive = anyio.create_memory_object_stream[_Job](MAX_QUEUED)
        async with anyio.create_task_group() as tg, send, receive:
            for _ in range(SIGNERS):
                tg.start_soon(self._sign_forever, receive.clone())
            tg.start_soon(self._every, self.flush_interval_s, self.flush_statuses)
            if self.ca is not None:
                tg.start_soon(self._every, EXPIRING_REFRESH_S, self._count_expiring)
            self._jobs = send
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._jobs = None
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    try:
                        await self.flush_statuses()
                    except (psycopg.Error, PoolTimeout) as exc:
                        logger.warning("connection settings statuses not written: %s", exc)

    async def _every(self, interval_s: float, step: Callable[[], Any]) -> None:
        while True:
            try:
                await step()
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning("connection settings: database step failed: %s", exc)
            await sleep_to_tick(interval_s)

    async def _count_expiring(self) -> None:
        self.expiring = await self._db.run(lambda conn: sq.expiring_count(conn, EXPIRING_DAYS))

    async def _sign_forever(self, jobs: MemoryObjectReceiveStream[_Job]) -> None:
        limiter = anyio.CapacityLimiter(1)
        async with jobs:
            async for job in jobs:
                try:
                    await self._serve(job, limiter)
                except CertificateRequestError as exc:
                    self._count_refusal(exc.reason)
                    self._tell(job.uid, exc.message)
                except (psycopg.Error, PoolTimeout) as exc:
                    self._count_refusal("database")
                    logger.warning(
                        "certificate for agent %s not issued: %s", format_instance_uid(job.uid), exc
                    )
                finally:
                    self._inflight.discard(job.uid)

    async def _serve(self, job: _Job, limiter: anyio.CapacityLimiter) -> None:
        assert self.ca is not None
        ca, uid = self.ca, job.uid
        now = dt.datetime.now(dt.UTC)
        stored = await self._db.run(lambda conn: sq.certificate_of(conn, uid))
        if job.request is not None and _reusable(stored, job.request, now, ca.ttl):
            assert stored is not None
            self.redelivered_total += 1
            self._deliver(uid, stored.serial, stored.certificate.encode(), None)
            return
        request = job.request
        if request is None:
            issued = await anyio.to_thread.run_sync(ca.generate, uid, now, limiter=limiter)
        else:
            issued = await anyio.to_thread.run_sync(ca.sign, request, uid, now, limiter=limiter)
        row = _row(issued, "csr" if request is not None else "rotation", self.instance_id)
        await self._db.run(lambda conn: sq.record_certificate(conn, uid, row, self.instance_id))
        self.issued_total += 1
        await self._count_expiring()
        logger.info(
            "issued certificate %s to agent %s (%s, valid until %s)",
            issued.serial_hex,
            format_instance_uid(uid),
            row.origin,
            issued.not_after.isoformat(),
        )
        self._deliver(uid, issued.serial_hex, issued.pem, issued.private_key_pem)

    def _deliver(self, uid: bytes, serial: str, pem: bytes, private_key: bytes | None) -> None:
        """Hand the certificate to the agent's next reply (pushed now over WebSocket)."""
        assert self.ca is not None
        self._serials[uid] = serial.encode()
        record = self._fleet.registry.get(uid)
        if record is None:
            return  # forgotten meanwhile: it asks again when it comes back
        certificate = pb.TLSCertificate(cert=pem, ca_cert=self.ca.pem)
        if private_key is not None:
            certificate.private_key = private_key
        offer = SettingsOffer(self._parts(record), serial=serial.encode(), certificate=certificate)
        record.state.set_settings_offer(offer)
        self._set_timeout(record)
        self._fleet.push(record)

    def _tell(self, uid: bytes, message: str) -> None:
        """A refusal found in a worker: a WebSocket agent is told at once (BadRequest)."""
        record = self._fleet.registry.get(uid)
        if record is None or record.connection is None or not record.connection.can_push:
            return
        reply = error_response(ERROR_BAD_REQUEST, message, instance_uid=record.state.wire_uid)
        record.connection.send(reply)

    def statistics(self) -> SettingsStatistics:
        return SettingsStatistics(
            issued_total=self.issued_total,
            redelivered_total=self.redelivered_total,
            refused_total=dict(self.refused_total),
            expiring=self.expiring,
            queued=len(self._inflight),
        )


def _reusable(
    stored: sq.CertificateRow | None,
    request: CertificateRequest,
    now: dt.datetime,
    ttl: dt.timedelta,
) -> bool:
    """The stored certificate answers this CSR: same key, and not due for renewal (less than
    ``EXPIRING_DAYS`` or a third of its lifetime left)."""
    if stored is None or stored.key_sha256 != request.key_sha256:
        return False
    renew_before = min(dt.timedelta(days=EXPIRING_DAYS), ttl / 3)
    return stored.not_after - now > renew_before


def _row(issued: IssuedCertificate, origin: str, instance_id: str) -> sq.CertificateRow:
    return sq.CertificateRow(
        serial=issued.serial_hex,
        not_before=issued.not_before,
        not_after=issued.not_after,
        key_sha256=issued.key_sha256,
        certificate=issued.pem.decode("ascii"),
        origin=origin,
        issued_at=dt.datetime.now(dt.UTC),
        issued_by=instance_id,
    )
