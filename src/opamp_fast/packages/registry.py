"""The package registry: package versions, what each agent is offered, and what agents report.

* **Versions** live in Postgres (``packages``: name, version, type, size, SHA-256, signature)
  and their files in a :class:`~.store.PackageStore`. Versions sort by semantic version
  (:mod:`.semver`).
* **Offers** (``package_offers``: agent -> one version per package name) are held in memory by
  every instance, loaded at start and kept current by a fleet-wide ``packages`` notice sent in
  the transaction that changed them. A record new to this instance gets its agent's offer
  (``FleetHandler.on_new_record``); a changed offer is set on the record held here and pushed
  at once to a WebSocket agent (an HTTP agent gets it with its next poll). The protocol core
  offers ``packages_available`` only to agents reporting AcceptsPackages, once per session and
  until the agent reports our ``all_packages_hash`` back.
* **Group offers** (``group_packages``: group -> one version per package name) are held in
  memory too, reloaded with the configuration directory (``ConfigService`` calls
  :meth:`PackageRegistry.load_groups` before it re-resolves the agents, so a group change comes
  with a ``configs`` notice). An agent without an offer of its own gets the offer of the group
  that decides it under the configs' precedence (most selector keys, then name; config pins do
  not matter here): :meth:`PackageRegistry.assign`, a few dict lookups, run when the agent comes
  online, its description or labels change, or the groups change. Never a database round trip.
* One ``PackagesAvailable`` message is built per distinct set of versions and shared by every
  agent offered that set. Its ``all_packages_hash`` covers names, versions, types, content
  hashes and signatures (never the URLs), so a refreshed download URL is not a new offer.
  Download URLs are signed and expire (``package_url_ttl_s``); messages are rebuilt at half
  their lifetime, and every new session gets the current one.
* **Statuses** (``PackageStatuses`` reported by agents) are coalesced per agent on the event
  loop (last report wins) and written by :class:`StatusWriter` in batches from a worker thread,
  never per message.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

from ..protocol import pb
from ..redaction import redact_error_text, without_nul
from ..storage.notices import FLEET_CHANNEL, encode_notices
from ..ticks import sleep_to_tick
from .semver import parse_semver
from .signing import URLSigner
from .store import PackageStore

if TYPE_CHECKING:
    from ..fleet.handler import FleetHandler
    from ..fleet.registry import AgentRecord, Registry
    from ..storage import Database

__all__ = [
    "PackageInfo",
    "PackageRegistry",
    "PackageStatistics",
    "all_packages_hash",
    "validate_name",
    "validate_version",
]

logger = logging.getLogger(__name__)

# Package names: 1 to 128 of letters, digits, '.', '_', '-', starting with a letter or digit, no
# "..". Also the ``pattern`` of the OpenAPI document; matched whole (``$`` alone would accept a
# final newline).
NAME_PATTERN: Final = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
MAX_NAME_CHARS: Final = 128
NAME_RE: Final = re.compile(NAME_PATTERN)
TYPES: Final = {"top_level": pb.PackageType_TopLevel, "addon": pb.PackageType_Addon}
STATUS_NAMES: Final[dict[int, str]] = {
    pb.PackageStatusEnum_Installed: "installed",
    pb.PackageStatusEnum_InstallPending: "install_pending",
    pb.PackageStatusEnum_Installing: "installing",
    pb.PackageStatusEnum_InstallFailed: "install_failed",
    pb.PackageStatusEnum_Downloading: "downloading",
}
Ref = tuple[str, str]  # (name, version)


def validate_name(name: str) -> str | None:
    """None when ``name`` is a valid package name, else why not."""
    if len(name) > MAX_NAME_CHARS or not NAME_RE.fullmatch(name):
        return (
            "must be 1 to 128 characters: letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return None


def validate_version(version: str) -> str | None:
    try:
        parse_semver(version)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class PackageInfo:
    name: str
    version: str
    type: str  # "top_level" | "addon"
    size_bytes: int
    sha256: bytes
    signature: bytes | None
    storage_key: str
    created_at: datetime | None = None

    @property
    def etag(self) -> str:
        return f'"{self.sha256.hex()}"'

    @property
    def package_hash(self) -> bytes:
        """``PackageAvailable.hash``: over the other fields and the file's content hash."""
        h = hashlib.sha256()
        for part in (
            self.type.encode(),
            self.version.encode(),
            self.sha256,
            self.signature or b"",
        ):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()


def all_packages_hash(infos: Iterable[PackageInfo]) -> bytes:
    """The offer's ``all_packages_hash``: per package (sorted by name), its name and hash."""
    h = hashlib.sha256()
    for info in sorted(infos, key=lambda i: i.name):
        for part in (info.name.encode(), info.package_hash):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


@dataclass(frozen=True, slots=True)
class PackageStatistics:
    offers_sent_total: int  # OpAMP messages that carried packages_available
    agents_offered: int  # agents with a package offer (fleet-wide, as known here)
    installed_total: int  # reported transitions to Installed
    failed_total: int  # reported transitions to InstallFailed
    downloads_total: int  # downloads served by this instance (not presigned S3 ones)
    download_bytes_total: int


# ------------------------------------------------------------------------------ SQL (threads)

_COLUMNS = "name, version, type, size_bytes, sha256, signature, storage_key, created_at"


def _info(row: Sequence[Any]) -> PackageInfo:
    return PackageInfo(
        row[0],
        row[1],
        row[2],
        int(row[3]),
        bytes(row[4]),
        bytes(row[5]) if row[5] is not None else None,
        row[6],
        row[7],
    )


def q_get(
    conn: psycopg.Connection[Any], name: str, version: str, *, lock: str = ""
) -> PackageInfo | None:
    """The version; ``lock`` (``"FOR KEY SHARE"``, ``"FOR UPDATE"``) locks its row."""
    assert lock in ("", "FOR KEY SHARE", "FOR UPDATE")
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM packages WHERE name = %s AND version = %s {lock}",
        (name, version),
    ).fetchone()
    return _info(row) if row else None


def q_versions(conn: psycopg.Connection[Any], name: str) -> list[PackageInfo]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM packages WHERE name = %s", (name,)).fetchall()
    return sorted((_info(r) for r in rows), key=lambda i: parse_semver(i.version), reverse=True)


def q_all(conn: psycopg.Connection[Any]) -> list[PackageInfo]:
    return [_info(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM packages").fetchall()]


def q_insert(conn: psycopg.Connection[Any], info: PackageInfo) -> PackageInfo:
    row = conn.execute(
        f"""INSERT INTO packages (name, version, type, size_bytes, sha256, signature, storage_key)
        VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
        (
            info.name,
            info.version,
            info.type,
            info.size_bytes,
            info.sha256,
            info.signature,
            info.storage_key,
        ),
    ).fetchone()
    assert row is not None
    return _info(row)


def q_offered_count(conn: psycopg.Connection[Any], name: str, version: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM package_offers WHERE name = %s AND version = %s", (name, version)
    ).fetchone()
    return int(row[0]) if row else 0


def q_delete(conn: psycopg.Connection[Any], name: str, version: str) -> PackageInfo | None:
    row = conn.execute(
        f"DELETE FROM packages WHERE name = %s AND version = %s RETURNING {_COLUMNS}",
        (name, version),
    ).fetchone()
    return _info(row) if row else None


def q_offers(
    conn: psycopg.Connection[Any], uids: Sequence[bytes] | None = None
) -> tuple[dict[bytes, list[Ref]], dict[Ref, PackageInfo]]:
    """Offers (of ``uids``, or all) and the package versions they name."""
    sql = (
        "SELECT o.instance_uid, p.name, p.version, p.type, p.size_bytes, p.sha256, p.signature, "
        "p.storage_key, p.created_at FROM package_offers o "
        "JOIN packages p ON p.name = o.name AND p.version = o.version"
    )
    params: tuple[Any, ...] = ()
    if uids is not None:
        sql += " WHERE o.instance_uid = ANY(%s)"
        params = (list(uids),)
    offers: dict[bytes, list[Ref]] = {}
    infos: dict[Ref, PackageInfo] = {}
    for row in conn.execute(sql, params):
        info = _info(row[1:])
        ref = (info.name, info.version)
        infos[ref] = info
        offers.setdefault(bytes(row[0]), []).append(ref)
    return offers, infos


def q_set_offers(
    conn: psycopg.Connection[Any], uid: bytes, refs: Sequence[Ref], sender: str
) -> None:
    """Replace ``uid``'s offers and tell every instance, in one transaction."""
    _replace_offers(conn, "package_offers", "instance_uid", uid, refs)
    for payload in encode_notices("packages", sender, uids=[uid.hex()]):
        conn.execute("SELECT pg_notify(%s, %s)", (FLEET_CHANNEL, payload))


def q_group_offers(
    conn: psycopg.Connection[Any],
) -> tuple[dict[str, list[Ref]], dict[Ref, PackageInfo]]:
    """Every group's offer and the package versions they name."""
    offers: dict[str, list[Ref]] = {}
    infos: dict[Ref, PackageInfo] = {}
    for row in conn.execute(
        "SELECT g.group_name, p.name, p.version, p.type, p.size_bytes, p.sha256, p.signature, "
        "p.storage_key, p.created_at FROM group_packages g "
        "JOIN packages p ON p.name = g.name AND p.version = g.version"
    ):
        info = _info(row[1:])
        ref = (info.name, info.version)
        infos[ref] = info
        offers.setdefault(row[0], []).append(ref)
    return offers, infos


def q_group_packages(
    conn: psycopg.Connection[Any], group: str | None = None
) -> dict[str, list[Ref]]:
    """Group name -> its (name, version) offers, by package name (of ``group``, or all)."""
    sql = "SELECT group_name, name, version FROM group_packages"
    params: tuple[Any, ...] = ()
    if group is not None:
        sql += " WHERE group_name = %s"
        params = (group,)
    out: dict[str, list[Ref]] = {}
    for g, name, version in conn.execute(sql + " ORDER BY group_name, name", params):
        out.setdefault(g, []).append((name, version))
    return out


def q_set_group_packages(conn: psycopg.Connection[Any], group: str, refs: Sequence[Ref]) -> None:
    """Replace ``group``'s offers (the caller locked the versions and notifies the fleet)."""
    _replace_offers(conn, "group_packages", "group_name", group, refs)


def _replace_offers(
    conn: psycopg.Connection[Any], table: str, column: str, key: object, refs: Sequence[Ref]
) -> None:
    """The offers of one agent or group (``table`` and ``column`` are ours, never input)."""
    conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (key,))
    if refs:
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} ({column}, name, version) VALUES (%s, %s, %s)",
                [(key, n, v) for n, v in refs],
            )


def q_offering_groups(conn: psycopg.Connection[Any], name: str, version: str) -> list[str]:
    rows = conn.execute(
        "SELECT group_name FROM group_packages WHERE name = %s AND version = %s "
        "ORDER BY group_name",
        (name, version),
    ).fetchall()
    return [r[0] for r in rows]


def q_agent_statuses(conn: psycopg.Connection[Any], uid: bytes) -> dict[str, Any]:
    """The agent's offers and its last PackageStatuses report, as JSON-able values."""
    offered = conn.execute(
        "SELECT name, version FROM package_offers WHERE instance_uid = %s ORDER BY name", (uid,)
    ).fetchall()
    report = conn.execute(
        "SELECT server_provided_all_packages_hash, error_message, updated_at "
        "FROM agent_package_reports WHERE instance_uid = %s",
        (uid,),
    ).fetchone()
    rows = conn.execute(
        "SELECT name, agent_has_version, agent_has_hash, server_offered_version, "
        "server_offered_hash, status, error_message, download_percent, updated_at "
        "FROM agent_package_statuses WHERE instance_uid = %s ORDER BY name",
        (uid,),
    ).fetchall()
    return {
        "offered": [{"name": n, "version": v} for n, v in offered],
        "server_provided_all_packages_hash": bytes(report[0]).hex() if report else None,
        "error_message": report[1] if report else None,
        "reported_at": report[2] if report else None,
        "statuses": [
            {
                "name": r[0],
                "agent_has_version": r[1],
                "agent_has_hash": bytes(r[2]).hex(),
                "server_offered_version": r[3],
                "server_offered_hash": bytes(r[4]).hex(),
                "status": r[5],
                "error_message": r[6],
                "download_percent": r[7],
                "updated_at": r[8],
            }
            for r in rows
        ],
    }


def q_package_status(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """Per version: agents offered it, and reported statuses (by the version offered, or the
    version the agent has when it was not offered one)."""
    offered = dict(
        conn.execute(
            "SELECT version, count(*) FROM package_offers WHERE name = %s GROUP BY version",
            (name,),
        ).fetchall()
    )
    counts: dict[str, dict[str, int]] = {}
    for version, status, n in conn.execute(
        "SELECT CASE WHEN status = 'installed' THEN agent_has_version "
        "ELSE COALESCE(NULLIF(server_offered_version, ''), agent_has_version) END, "
        "status, count(*) FROM agent_package_statuses WHERE name = %s GROUP BY 1, 2",
        (name,),
    ):
        counts.setdefault(version, {})[status] = int(n)
    failures = conn.execute(
        "SELECT a.uid_text, s.instance_uid, s.server_offered_version, s.error_message, "
        "s.updated_at FROM agent_package_statuses s "
        "LEFT JOIN agents a ON a.instance_uid = s.instance_uid "
        "WHERE s.name = %s AND s.status = 'install_failed' ORDER BY s.updated_at DESC LIMIT 100",
        (name,),
    ).fetchall()
    return {"offered": offered, "counts": counts, "failures": failures}


# ------------------------------------------------------------------------------ status writer


class StatusWriter:
    """Coalesces reported ``PackageStatuses`` per agent and writes them in batches."""

    def __init__(self, db: Database, *, flush_interval_s: float) -> None:
        self._db = db
        self._interval = flush_interval_s
        self._pending: dict[bytes, pb.PackageStatuses] = {}
        self._wake = anyio.Event()
        self.errors_total = 0

    def report(self, uid: bytes, statuses: pb.PackageStatuses) -> None:
        """O(1) on the event loop; ``statuses`` is the agent state's own (never mutated)."""
        self._pending[uid] = statuses

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._db.run(lambda conn: _write_statuses(conn, batch))
        except psycopg.Error as exc:
            self.errors_total += 1
            logger.warning("package statuses not written (%s); retrying", str(exc).strip())
            for uid, statuses in batch.items():
                self._pending.setdefault(uid, statuses)  # newer reports win

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await sleep_to_tick(self._interval)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.flush()


def _write_statuses(conn: psycopg.Connection[Any], batch: dict[bytes, pb.PackageStatuses]) -> None:
    uids = list(batch)
    reports = []
    rows = []
    for uid, st in batch.items():
        error = redact_error_text(st.error_message[:4096])
        reports.append((uid, bytes(st.server_provided_all_packages_hash), error))
        for name, p in st.packages.items():
            status = STATUS_NAMES.get(int(p.status), str(int(p.status)))
            percent = (
                p.download_details.download_percent if p.HasField("download_details") else None
            )
            rows.append(
                (
                    uid,
                    without_nul(name)[:256],
                    without_nul(p.agent_has_version)[:256],
                    bytes(p.agent_has_hash)[:64],
                    without_nul(p.server_offered_version)[:256],
                    bytes(p.server_offered_hash)[:64],
                    status,
                    redact_error_text(p.error_message[:4096]),
                    percent,
                )
            )
    conn.execute("DELETE FROM agent_package_statuses WHERE instance_uid = ANY(%s)", (uids,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO agent_package_reports (instance_uid, server_provided_all_packages_hash, "
            "error_message) VALUES (%s, %s, %s) ON CONFLICT (instance_uid) DO UPDATE SET "
            "server_provided_all_packages_hash = EXCLUDED.server_provided_all_packages_hash, "
            "error_message = EXCLUDED.error_message, updated_at = now()",
            reports,
        )
        if rows:
            cur.executemany(
                "INSERT INTO agent_package_statuses (instance_uid, name, agent_has_version, "
                "agent_has_hash, server_offered_version, server_offered_hash, status, "
                "error_message, download_percent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )


# ------------------------------------------------------------------------------ the registry


class PackageRegistry:
    """Offers held in memory for the agents of this instance; see the module docstring."""

    def __init__(
        self,
        *,
        db: Database,
        store: PackageStore,
        signer: URLSigner,
        registry: Registry,
        fleet: FleetHandler,
        instance_id: str,
        base_url: str,
        url_ttl_s: int,
        max_bytes: int,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.store = store
        self.signer = signer
        self.registry = registry
        self.fleet = fleet
        self.instance_id = instance_id
        self.base_url = base_url.rstrip("/")
        self.url_ttl_s = url_ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self.statuses = StatusWriter(db, flush_interval_s=flush_interval_s)
        self._offers: dict[bytes, tuple[Ref, ...]] = {}
        self._groups: dict[str, tuple[Ref, ...]] = {}  # group -> its offer (non-empty)
        # The group deciding an agent (``ConfigService.deciding_group``); None: no groups.
        self.group_of: Callable[[AgentRecord], str | None] | None = None
        self._infos: dict[Ref, PackageInfo] = {}
        self._built: dict[tuple[Ref, ...], tuple[float, pb.PackagesAvailable]] = {}
        self._notices_in, self._notices_out = anyio.create_memory_object_stream[list[bytes]](256)
        self._reload_all = False
        self._last_status: dict[bytes, dict[str, int]] = {}
        self.installed_total = 0
        self.failed_total = 0
        self.downloads_total = 0
        self.download_bytes_total = 0
        self.io_limiter = anyio.CapacityLimiter(16)  # file and object-store I/O threads
        fleet.on_new_record = self.attach
        fleet.on_package_statuses = self.on_statuses

    # -- offers --------------------------------------------------------------------------
    def download_url(self, info: PackageInfo, now: float) -> str:
        direct = self.store.direct_url(info.storage_key, self.url_ttl_s)
        if direct is not None:
            return direct
        expires = int(now) + self.url_ttl_s
        return self.base_url + self.signer.url(info.name, info.version, expires)

    def build_offer(self, infos: Sequence[PackageInfo], now: float) -> pb.PackagesAvailable:
        offer = pb.PackagesAvailable(all_packages_hash=all_packages_hash(infos))
        for info in infos:
            entry = offer.packages[info.name]
            entry.type = TYPES[info.type]  # type: ignore[assignment]
            entry.version = info.version
            entry.hash = info.package_hash
            entry.file.download_url = self.download_url(info, now)
            entry.file.content_hash = info.sha256
            if info.signature:
                entry.file.signature = info.signature
        return offer

    def offer_for(self, refs: tuple[Ref, ...], now: float) -> pb.PackagesAvailable | None:
        """The shared message for ``refs`` (rebuilt at half the URLs' lifetime)."""
        built = self._built.get(refs)
        if built is not None and now - built[0] < self.url_ttl_s / 2:
            return built[1]
        infos = [self._infos[r] for r in refs if r in self._infos]
        if not infos:
            return None
        offer = self.build_offer(infos, now)
        self._built[refs] = (now, offer)
        return offer

    def attach(self, record: AgentRecord) -> None:
        """A record new to this instance: give it its agent's offer (hot path: dict lookups)."""
        self.assign(record)

    def refs_for(self, record: AgentRecord) -> tuple[Ref, ...] | None:
        """The agent's own offer, else its deciding group's, else None."""
        refs = self._offers.get(record.uid)
        if refs is None and self._groups and self.group_of is not None:
            group = self.group_of(record)
            if group is not None:
                refs = self._groups.get(group)
        return refs

    def assign(self, record: AgentRecord) -> bool:
        """Set the agent's effective offer on its state; True when what it is offered changed
        (a fresher message with the same hash is set, but is no change)."""
        refs = self.refs_for(record)
        state = record.state
        offer = self.offer_for(refs, self._clock()) if refs else None
        if offer is None:
            if state.packages_hash is None:
                return False
            state.clear_packages_available()
            return True
        if state.packages_available is offer:
            return False
        before = state.packages_hash
        state.set_packages_available(offer)
        return before != offer.all_packages_hash

    def _apply(self, uid: bytes) -> None:
        record = self.registry.get(uid)
        if record is not None and self.assign(record):
            self.fleet.push(record)

    def _cache_infos(self, infos: dict[Ref, PackageInfo]) -> None:
        changed = {r for r, info in infos.items() if self._infos.get(r) != info}
        self._infos.update(infos)
        for refs in [refs for refs in self._built if any(r in changed for r in refs)]:
            del self._built[refs]  # a re-uploaded version (deleted, then uploaded again)

    async def load_groups(self) -> None:
        """Reload the groups' offers (by ``ConfigService``, before it re-resolves the agents)."""
        groups, infos = await self.db.run(q_group_offers)
        self._cache_infos(infos)
        self._groups = {g: tuple(sorted(refs)) for g, refs in groups.items() if refs}

    def group_offer(self, group: str) -> tuple[Ref, ...]:
        """What ``group`` offers, as this instance knows it."""
        return self._groups.get(group, ())

    def _replace(
        self, uids: Iterable[bytes], offers: dict[bytes, list[Ref]], infos: dict[Ref, PackageInfo]
    ) -> None:
        self._cache_infos(infos)
        for uid in uids:
            refs = tuple(sorted(offers.get(uid, ())))
            if refs:
                self._offers[uid] = refs
            else:
                self._offers.pop(uid, None)
            self._apply(uid)

    async def load(self) -> None:
        offers, infos = await self.db.run(q_offers)
        dropped = set(self._offers) - set(offers)
        self._offers = {uid: tuple(sorted(refs)) for uid, refs in offers.items()}
        self._cache_infos(infos)
        for uid in [*self._offers, *dropped]:
            self._apply(uid)

    async def set_offers(
        self,
        uid: bytes,
        refs: Sequence[Ref],
        also: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:
        """Replace the agent's offers (already validated) fleet-wide, in one transaction with
        ``also`` (the audit row), and push them to the agent if it is held here."""

        def work(conn: psycopg.Connection[Any]) -> None:
            q_set_offers(conn, uid, refs, self.instance_id)
            if also is not None:
                also(conn)

        await self.db.run(work)
        await self.refresh([uid])

    def cached_info(self, name: str, version: str) -> PackageInfo | None:
        """A version some offer names (downloads skip the database for those)."""
        return self._infos.get((name, version))

    async def refresh(self, uids: Sequence[bytes]) -> None:
        offers, infos = await self.db.run(lambda conn: q_offers(conn, uids))
        self._replace(uids, offers, infos)

    def notice(self, notice: dict[str, Any]) -> None:
        """A ``packages`` notice from another instance (on the event loop, never blocks)."""
        uids = [bytes.fromhex(u) for u in notice.get("uids", ())]
        try:
            self._notices_in.send_nowait(uids)
        except anyio.WouldBlock:
            self._reload_all = True  # too many at once: reload everything on the next turn

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the offers, then follow notices, write statuses and refresh URLs."""
        await anyio.to_thread.run_sync(self.store.check)
        await self.load()
        with self._notices_in, self._notices_out:
            await self._serve(task_status)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.statuses.run)
            task_status.started()
            refresh_every = max(1.0, self.url_ttl_s / 4)
            next_refresh = anyio.current_time() + refresh_every
            while True:
                with anyio.move_on_after(max(0.0, next_refresh - anyio.current_time())):
                    uids = await self._notices_out.receive()
                    if self._reload_all:
                        self._reload_all = False
                        await self.load()
                    else:
                        await self.refresh(uids)
                    continue
                next_refresh = anyio.current_time() + refresh_every
                self._refresh_urls()

    def _refresh_urls(self) -> None:
        now = self._clock()
        stale = [refs for refs, (at, _) in self._built.items() if now - at >= self.url_ttl_s / 2]
        if not stale:
            return
        for refs in stale:
            del self._built[refs]
        holders: dict[bytes, AgentRecord | None] = {u: self.registry.get(u) for u in self._offers}
        for record in self.registry.online_records():
            if record.state.packages_hash is not None:
                holders[record.uid] = record
        for holder in holders.values():
            if holder is not None:
                self.assign(holder)  # the same offer with fresh URLs: nothing is pushed

    # -- statuses ------------------------------------------------------------------------
    def on_statuses(self, uid: bytes, statuses: pb.PackageStatuses) -> None:
        """The agent's PackageStatuses changed (on the event loop, O(packages))."""
        self.statuses.report(uid, statuses)
        last = self._last_status.setdefault(uid, {})
        for name, status in statuses.packages.items():
            code = int(status.status)
            if last.get(name) != code:
                if code == pb.PackageStatusEnum_Installed:
                    self.installed_total += 1
                elif code == pb.PackageStatusEnum_InstallFailed:
                    self.failed_total += 1
            last[name] = code
        for name in [n for n in last if n not in statuses.packages]:
            del last[name]

    def forget(self, uids: Iterable[bytes]) -> None:
        """Agents deleted from the database: their last reported statuses go too."""
        for uid in uids:
            self._last_status.pop(uid, None)

    def statistics(self) -> PackageStatistics:
        return PackageStatistics(
            offers_sent_total=self.fleet.package_offers_sent_total,
            agents_offered=len(self._offers),
            installed_total=self.installed_total,
            failed_total=self.failed_total,
            downloads_total=self.downloads_total,
            download_bytes_total=self.download_bytes_total,
        )
