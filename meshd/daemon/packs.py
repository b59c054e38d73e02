"""Skill packs on a live node: what is installed, whom it trusts, what is revoked, what
the rest of the mesh holds, and how packs travel between nodes.

The I/O edge of the pack format (:mod:`meshd.skills`: manifest, archive, signature,
verification, revocation records, the catalog, fetch checks) and of the sandbox runner
(:mod:`meshd.skills.sandbox`). It takes narrow ports: a keyed store, the event log, the
clock, this node's identity and role, the skill registry, a :class:`Mesh` port (who is a
member, how to reach them, the refusal counters) and a :class:`Runs` port (stop the runs
of a revoked skill, run statistics).

- **installed packs** live in ``<state-dir>/skills/<name>/<version>/`` with the archive
  kept beside them (``<version>.pack``) so the node can serve it to others; the index
  is the LMDB table ``packs``. Each is registered in the executor's registry as a
  :class:`PackSkill`, which checks the revocation list before every run;
- **trust**: a pack is trusted when its signer is an admitted member of this mesh (its
  Ed25519 key is in the member view, or is this node's own) or a key the operator added
  with ``meshctl skill trust add``; ``--revoker`` also makes the key a *revoker* here;
- **revocations** are signed records (:mod:`meshd.skills.revocation`): a signer key may
  be revoked by its holder or a revoker, a pack by its signer or a revoker. Each record
  is checked (signature, entitlement, bounds) on arrival, kept in the LMDB table
  ``revocations``, relayed as it is to every member that joins, and audited with who
  signed and who sent it; a refused one changes nothing and is counted;
- **the mesh catalog** (:class:`~meshd.skills.catalog.Catalog`): every node announces its
  inventory (SKILL_ANNOUNCE) in full to members that join and in deltas when it changes,
  so any node can validate a task's parameters against a skill it does not have, and
  ``meshctl skill list --mesh`` shows which host has which version. Packs of untrusted
  signers are not kept, and the catalog is bounded per member and in all;
- **sharing**: ``publish`` announces a pack as a delta; nodes that trust its signer and
  have ``[skills] auto_install`` fetch it in chunks (SKILL_FETCH / SKILL_CHUNK) from
  the announcer into a file under ``<state-dir>/skills/.fetch/``, checking every chunk
  against the announced size and the SHA-256 against the pack id as the bytes arrive
  (:mod:`meshd.skills.fetch`), then verify and install it. At most ``max_fetches``
  fetches of at most ``max_fetch_bytes`` together run at once. Every install and every
  refusal is an audit record.

Refusals raise :class:`~meshd.errors.RequestError` with the pack's refusal code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from meshd import log
from meshd.clock import Clock
from meshd.config import SkillsConfig
from meshd.daemon.events import EventLog
from meshd.errors import RequestError
from meshd.identity import Identity
from meshd.roles import Role
from meshd.skills import catalog as cat
from meshd.skills import revocation as rev
from meshd.skills.api import SkillContext
from meshd.skills.archive import PackError
from meshd.skills.build import build_pack
from meshd.skills.builtin import Registry
from meshd.skills.catalog import Catalog
from meshd.skills.executor import SkillStats
from meshd.skills.fetch import CHUNK_BYTES, Download, FetchRefused
from meshd.skills.install import install_pack
from meshd.skills.manifest import Manifest, compare_versions, parse_manifest
from meshd.skills.revocation import Held, RevocationList, Rules
from meshd.skills.spec import SkillError, SkillSpec
from meshd.skills.verify import VerifiedPack, inspect_pack, verify_pack
from meshd.wire.messages import Payload, SkillAnnounce, SkillChunk, SkillFetch, SkillRevoke
from meshd.wire.records import MemberInfo, PackInfo, Revocation, RevocationKind
from meshd.wire.schema import MAX_REVOKED

_log = log.get("meshd.skills")

#: s a fetcher waits for one chunk before it tries another holder.
CHUNK_TIMEOUT = 5.0
#: s. Least time between two logged refusals of one kind from one member (every refusal
#: is counted; refused revocations are also audited at this rate).
REFUSAL_LOG_INTERVAL: Final = 60.0
#: (member, reason) pairs remembered for that rate limit; beyond it the memory starts
#: afresh.
MAX_REFUSAL_SOURCES: Final = 1024
#: Where partial fetches are written, under the packs' root (not a valid skill name).
FETCH_DIR: Final = ".fetch"


class KeyedStore(Protocol):
    """The store's small keyed tables (``packs``, ``trust``, ``revocations``; and the
    ``revoked_keys`` / ``revoked_packs`` of older versions, migrated at start)."""

    def kv_get(self, table: str, key: str) -> Any: ...

    def kv_put(self, table: str, key: str, value: Any, durable: bool = True) -> None: ...

    def kv_delete(self, table: str, key: str) -> bool: ...

    def kv_items(self, table: str) -> list[tuple[str, Any]]: ...


class Mesh(Protocol):
    """The members of the mesh and the links to them, as the pack manager needs them."""

    def members(self) -> list[MemberInfo]:
        """The listed members (not this node)."""
        ...

    def name_of(self, node_id: str) -> str: ...

    def send(self, to: str, payload: Payload) -> None: ...

    def publish(self, payload: Payload) -> None: ...

    def reply(self, to: str, payload: Payload, correlation_id: bytes) -> None: ...

    def request(self, to: str, payload: Payload, msg_id: bytes) -> None: ...

    def reject(self, reason: str) -> None:
        """Count a refused message (or record) under ``reason``."""
        ...


class Runs(Protocol):
    """The local skill runs, as the pack manager needs them."""

    def stop_skill(self, name: str) -> int: ...

    def stats(self) -> Mapping[str, SkillStats]: ...


def source_dirs() -> list[Path]:
    """Where the built-in packs' sources are: the wheel's data, else the checkout's
    ``skill_packs/``."""
    here = Path(__file__).resolve().parent.parent
    return [p for p in (here / "_data" / "skill_packs", here.parent / "skill_packs") if p.is_dir()]


@dataclass(frozen=True, slots=True)
class Installed:
    """One installed pack."""

    info: PackInfo
    manifest: Manifest
    folder: Path
    installed_at: float


class PackSkill:
    """An installed pack as the executor sees it: its manifest's spec, run sandboxed,
    refused when the pack or its signer was revoked since it was installed."""

    def __init__(self, manager: PackManager, installed: Installed) -> None:
        self._manager = manager
        self.installed = installed
        self.spec: SkillSpec = installed.manifest.spec

    async def run(self, ctx: SkillContext) -> object:
        why = self._manager.revoked_reason(self.installed.info)
        if why:
            raise SkillError(why, code="revoked")
        from meshd.skills.sandbox import SandboxedSkill

        m = self.installed.manifest
        runner = SandboxedSkill(
            m.spec,
            self._manager.runtime_copy(self.installed),
            m.entry,
            m.limits,
            m.permissions,
            scratch_root=self._manager.scratch_root,
        )
        return await runner.run(ctx)


class PackManager:
    """Skill packs of one node (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        *,
        identity: Identity,
        role: Role,
        config: SkillsConfig,
        store: KeyedStore,
        events: EventLog,
        clock: Clock,
        mesh: Mesh,
        runs: Runs,
    ) -> None:
        self.root = root
        self.registry = registry
        self._identity = identity
        self._role = role
        self._cfg = config
        self._store = store
        self._events = events
        self._clock = clock
        self._mesh = mesh
        self._runs = runs
        self._bg: set[asyncio.Task[Any]] = set()
        self.scratch_root: Path | None = None
        self.installed: dict[str, Installed] = {}
        #: What the other members announced (trusted signers only, bounded).
        self.catalog = Catalog(
            config.max_packs_per_member, config.max_catalog_packs, config.max_catalog_bytes
        )
        self.revocations = RevocationList(
            config.max_revocations,
            config.max_revocations_per_key,
            Rules(
                is_revoker=self._designated_revoker, trusted=self.trusted, signer_of=self._signer_of
            ),
        )
        #: msg id of a SKILL_FETCH in flight -> (the holder asked, the answer).
        self._fetches: dict[bytes, tuple[str, asyncio.Future[SkillChunk]]] = {}
        #: pack id -> announced size, of the fetches running (bounded by the config).
        self._fetching: dict[str, int] = {}
        self._installing: set[str] = set()
        self._refusals: dict[tuple[str, str], float] = {}
        self.fetch_dir = root / FETCH_DIR
        # World-readable copies for the sandbox user, one folder per node (several nodes
        # may share a machine); removed when the node stops, and again when it starts.
        self._runtime_base = Path(tempfile.gettempdir()) / f"meshd-packs-{os.getuid()}"
        self._runtime_root = self._runtime_base / identity.node_id[:16]
        self.on_change: Callable[[], None] | None = None

    # ---- start ----------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel fetches in progress; remove the sandbox copies."""
        tasks = list(self._bg)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        shutil.rmtree(self._runtime_root, ignore_errors=True)
        shutil.rmtree(self.fetch_dir, ignore_errors=True)

    def start(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        shutil.rmtree(self._runtime_root, ignore_errors=True)
        shutil.rmtree(self.fetch_dir, ignore_errors=True)  # partial fetches of a past run
        for name, rec in self._store.kv_items("packs"):
            try:
                info = _info_from(rec)
                manifest = Manifest.from_dict(info.manifest)
                folder = self.root / name / info.version
                if not folder.is_dir():
                    raise PackError(f"{folder} is missing", code="missing_file")
            except (PackError, KeyError, TypeError, ValueError) as exc:
                _log.warning("installed_pack_skipped", name=name, error=str(exc))
                continue
            self._register(Installed(info, manifest, folder, float(rec.get("at", 0.0))))
        self._load_revocations()
        self._disable_revoked()
        self._install_role_packs()

    def _install_role_packs(self) -> None:
        """Build, sign and install the built-in packs this node's role carries (when
        missing or older than the shipped source)."""
        for name in self._role.skill_packs:
            src = next((d / name for d in source_dirs() if (d / name).is_dir()), None)
            if src is None:
                _log.warning("role_pack_missing", name=name, role=self._role.name)
                continue
            try:
                # The manifest alone says whether the shipped version is newer: no build
                # (hash, sign, verify) at every start.
                manifest = parse_manifest((src / "skill.toml").read_text(), str(src))
                have = self.installed.get(manifest.spec.name)
                if (
                    have is not None
                    and compare_versions(have.info.version, manifest.spec.version) >= 0
                ):
                    continue
                data = build_pack(src, self._identity, now=self._clock.wall())
                self.install_bytes(data, source=f"built-in {src}", announce=False)
            except (PackError, RequestError, OSError) as exc:
                _log.warning("role_pack_refused", name=name, error=str(exc))

    # ---- trust and revocation -----------------------------------------------------------

    def trusted(self, key: bytes) -> bool:
        """Admitted members' keys (and this node's), plus keys the operator trusted."""
        if key == self._identity.ed25519_pk:
            return True
        if self._store.kv_get("trust", key.hex()) is not None:
            return True
        return any(m.ed25519_pk == key for m in self._mesh.members())

    def _designated_revoker(self, key: bytes) -> bool:
        """This node's own key (it acts for its operator), or one the operator added with
        ``trust add --revoker``."""
        if key == self._identity.ed25519_pk:
            return True
        rec = self._store.kv_get("trust", key.hex())
        return isinstance(rec, dict) and bool(rec.get("revoker"))

    def is_revoker(self, key: bytes) -> bool:
        """``key`` may revoke any signer key or pack here (and is not revoked itself)."""
        return self.revocations.is_revoker(key)

    def _signer_of(self, pack_id: str) -> bytes | None:
        """The verified signer of the installed pack ``pack_id`` (None: not installed)."""
        for inst in self.installed.values():
            if inst.info.pack_id == pack_id:
                return inst.info.signer
        return None

    def _announced_trusted(self, key: bytes) -> bool:
        """May the catalog keep a pack signed by ``key``: trusted, and not revoked."""
        return self.trusted(key) and self.revocations.key_revoked(key) is None

    def revoked_keys(self) -> set[bytes]:
        return self.revocations.revoked_keys()

    def revoked_reason(self, info: PackInfo) -> str:
        """Why a pack may not run any more ('' when it may)."""
        held = self.revocations.pack_revoked(info.pack_id, info.signer)
        if held is not None:
            return f"pack {info.name} {info.version} ({info.pack_id[:12]}) was revoked"
        if self.revocations.key_revoked(info.signer) is not None:
            return f"the signer of {info.name} ({info.signer.hex()[:12]}) was revoked"
        return ""

    def trust_add(self, key_hex: str, note: str = "", revoker: bool = False) -> dict[str, Any]:
        key = _key(key_hex)
        self._store.kv_put(
            "trust", key.hex(), {"at": self._clock.wall(), "note": note, "revoker": revoker}
        )
        self._audit("SKILL_TRUST_ADDED", key=key.hex(), note=note, revoker=revoker)
        return {"key": key.hex(), "trusted": True, "revoker": self.is_revoker(key)}

    def trust_remove(self, key_hex: str) -> dict[str, Any]:
        key = _key(key_hex)
        if not self._store.kv_delete("trust", key.hex()):
            raise RequestError(f"key {key.hex()} is not in the trust store", code="unknown_key")
        self._audit("SKILL_TRUST_REMOVED", key=key.hex())
        return {"key": key.hex(), "trusted": self.trusted(key), "revoker": self.is_revoker(key)}

    def trust_list(self) -> list[dict[str, Any]]:
        out = [
            {
                "key": k,
                "source": "operator",
                "note": v.get("note", ""),
                "at": v.get("at"),
            }
            for k, v in self._store.kv_items("trust")
            if isinstance(v, dict)
        ]
        me = self._identity.ed25519_pk.hex()
        out.append(
            {"key": me, "source": "this node", "note": self._mesh.name_of(self._identity.node_id)}
        )
        for info in self._mesh.members():
            out.append({"key": info.ed25519_pk.hex(), "source": "member", "note": info.name})
        revoked = {k.hex() for k in self.revoked_keys()}
        for row in out:
            row["revoked"] = row["key"] in revoked
            row["revoker"] = self.is_revoker(bytes.fromhex(row["key"]))
        return out

    def _key_name(self, key: bytes) -> str:
        """Whose key ``key`` is, in words ('' when unknown here)."""
        if key == self._identity.ed25519_pk:
            return self._mesh.name_of(self._identity.node_id)
        for info in self._mesh.members():
            if info.ed25519_pk == key:
                return info.name
        rec = self._store.kv_get("trust", key.hex())
        if isinstance(rec, dict) and rec.get("note"):
            return f"operator key ({rec['note']})"
        return ""

    def revoke(self, keys: list[str], packs: list[str]) -> dict[str, Any]:
        """Revoke signer keys and/or pack ids: signed with this node's key (it acts for
        its operator, so it applies here), kept, applied, and published to the mesh, where
        each member applies it if this node's key may revoke the target there (a revoker
        there, or revoking its own key or packs)."""
        key_bytes = [_key(k) for k in keys]
        pack_ids = [_pack_id(p) for p in packs]
        if not key_bytes and not pack_ids:
            raise RequestError("give a key or a pack id to revoke", code="bad_request")
        me = self._identity
        at_ms = int(self._clock.wall() * 1000)
        targets = [(RevocationKind.KEY, k.hex()) for k in key_bytes]
        targets += [(RevocationKind.PACK, p) for p in pack_ids]
        records = [rev.sign(kind, t, at_ms, me.ed25519_pk, me.sign) for kind, t in targets]
        for rec in records:
            if rec in self.revocations:
                continue
            reason = self.revocations.judge(rec)
            if reason is not None:
                raise RequestError(
                    f"cannot revoke {rec.kind.value} {rec.target[:12]}: {reason} "
                    f"({_REASON_TEXT.get(reason, reason)})",
                    code=reason,
                )
        held = [h for h in (self._hold(rec, sent_by="") for rec in records) if h is not None]
        if held:
            self._disable_revoked()
        # Published even when held already: members that refused it before (this key was
        # not a revoker there then) judge it again.
        self._mesh.publish(SkillRevoke(tuple(records)))
        return {
            "keys": [k.hex() for k in key_bytes],
            "packs": pack_ids,
            "by": me.ed25519_pk.hex(),
            "new": len(held),
        }

    def _hold(self, rec: Revocation, sent_by: str, revoker: bool | None = None) -> Held | None:
        """Keep an accepted record: the list, the store, the audit trail."""
        held = self.revocations.add(rec, sent_by=sent_by, revoker=revoker)
        if held is None:
            return None
        self._store.kv_put("revocations", _record_key(rec), _record_to(held, self._clock.wall()))
        sender = sent_by or self._identity.node_id
        self._audit(
            "SKILL_KEY_REVOKED" if rec.kind is RevocationKind.KEY else "SKILL_PACK_REVOKED",
            **{"key" if rec.kind is RevocationKind.KEY else "pack_id": rec.target},
            by=rec.by.hex(),
            by_name=self._key_name(rec.by),
            by_revoker=held.revoker,
            sent_by=sender,
            sent_by_name=self._mesh.name_of(sender),
            at_ms=rec.at_ms,
        )
        return held

    def _on_revoke(self, sender: str, msg: SkillRevoke) -> None:
        """Records from a member: each judged on its own (PROTOCOL.md 13.4); a refused
        one changes nothing, and is counted (and, at most once a minute per member and
        reason, logged and audited)."""
        new = False
        for rec in msg.records:
            if rec in self.revocations:
                continue
            reason = self.revocations.judge(rec)
            if reason is None:
                new = self._hold(rec, sent_by=sender) is not None or new
                continue
            if self._refused(sender, reason, kind=rec.kind.value, target=rec.target[:12]):
                self._audit(
                    "SKILL_REVOKE_REFUSED",
                    kind=rec.kind.value,
                    target=rec.target,
                    by=rec.by.hex(),
                    by_name=self._key_name(rec.by),
                    sent_by=sender,
                    sent_by_name=self._mesh.name_of(sender),
                    reason=reason,
                )
        if new:
            self._disable_revoked()

    def _disable_revoked(self) -> None:
        """Take every installed pack that is revoked out of the registry (kept on disk:
        an operator may want to look), and stop its runs."""
        changed = False
        for inst in list(self.installed.values()):
            why = self.revoked_reason(inst.info)
            if why:
                self.registry.remove(inst.info.name)
                del self.installed[inst.info.name]
                stopped = self._runs.stop_skill(inst.info.name)
                _log.warning("pack_disabled", name=inst.info.name, reason=why, stopped=stopped)
                changed = True
        if changed:
            self._changed()

    def _load_revocations(self) -> None:
        """The kept records; then the unsigned revocations of older versions (tables
        ``revoked_keys`` / ``revoked_packs``): those this node's operator made are signed
        again with this node's key and kept; those received from other members are dropped
        with an audit record (nobody can tell any more whether their sender was entitled:
        that was the flaw). Nothing here stops a start."""
        for key, value in self._store.kv_items("revocations"):
            try:
                rec = _record_from(value)
                self.revocations.add(
                    rec, sent_by=str(value.get("sent_by", "")), revoker=bool(value["revoker"])
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                _log.warning("revocation_skipped", key=key, error=str(exc))
        me = self._identity
        for table, kind in (
            ("revoked_keys", RevocationKind.KEY),
            ("revoked_packs", RevocationKind.PACK),
        ):
            for target, value in self._store.kv_items(table):
                by = value.get("by") if isinstance(value, dict) else None
                at = value.get("at") if isinstance(value, dict) else None
                ok_target = len(target) == 64 and all(c in "0123456789abcdef" for c in target)
                if by == me.node_id and ok_target:
                    at_ms = int(at * 1000) if isinstance(at, int | float) and at >= 0 else 0
                    rec = rev.sign(kind, target, at_ms, me.ed25519_pk, me.sign)
                    self._hold(rec, sent_by="", revoker=True)
                    self._audit("SKILL_REVOCATION_MIGRATED", kind=kind.value, target=target)
                else:
                    self._audit(
                        "SKILL_REVOCATION_DROPPED",
                        kind=kind.value,
                        target=target,
                        sent_by=str(by),
                        reason="unsigned revocation of an older version, received from "
                        "another member: its entitlement cannot be checked",
                    )
                    _log.warning("legacy_revocation_dropped", kind=kind.value, target=target[:12])
                self._store.kv_delete(table, target)

    def _refused(self, sender: str, reason: str, **detail: Any) -> bool:
        """Count a refused message or record from ``sender``; log it if it is the first of
        its kind from that member in :data:`REFUSAL_LOG_INTERVAL` (then True)."""
        self._mesh.reject(reason)
        now = self._clock.monotonic()
        last = self._refusals.get((sender, reason))
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return False
        if len(self._refusals) >= MAX_REFUSAL_SOURCES:
            self._refusals.clear()
        self._refusals[(sender, reason)] = now
        _log.warning(
            "skill_message_refused",
            peer=sender[:12],
            name=self._mesh.name_of(sender),
            reason=reason,
            **detail,
        )
        return True

    # ---- install / remove / build -----------------------------------------------------------

    def install_bytes(self, data: bytes, source: str, announce: bool = True) -> dict[str, Any]:
        """Verify and install a pack archive. Raises RequestError (the pack's refusal code)
        with nothing installed when it fails any check."""
        try:
            probe = inspect_pack(data)
            name = probe.manifest.spec.name
            have = self.installed.get(name)
            pack = verify_pack(
                data,
                trusted=self.trusted,
                revoked_keys=self.revocations.revoked_keys(),
                revoked_packs=self.revocations.revoked_packs_for(probe.signer),
                installed_version=have.info.version if have else None,
                installed_pack_id=have.info.pack_id if have else None,
                now=self._clock.wall(),
            )
        except PackError as exc:
            self._audit("SKILL_REFUSED", source=source, code=exc.code, reason=str(exc))
            raise RequestError(f"pack refused ({exc.code}): {exc}", code=exc.code) from None
        if have is not None and have.info.pack_id == pack.pack_id:
            return self.describe(name)  # the same pack again: nothing to do
        folder = install_pack(pack, self.root)
        (self.root / name / f"{pack.manifest.spec.version}.pack").write_bytes(data)
        info = PackInfo(
            name,
            pack.manifest.spec.version,
            pack.pack_id,
            len(data),
            pack.signer,
            pack.manifest.to_dict(),
        )
        now = self._clock.wall()
        self._store.kv_put("packs", name, {**_info_to(info), "at": now})
        self._register(Installed(info, pack.manifest, folder, now))
        self._audit(
            "SKILL_INSTALLED",
            name=name,
            version=info.version,
            pack_id=info.pack_id,
            signer=pack.signer_id,
            source=source,
        )
        _log.info("pack_installed", name=name, version=info.version, source=source)
        if announce:
            # Our inventory, for the others' catalogs; not a publication (`publish` is).
            self._mesh.publish(self.inventory())
        self._changed()
        return self.describe(name)

    def build(self, folder: str) -> bytes:
        try:
            return build_pack(Path(folder), self._identity, now=self._clock.wall())
        except PackError as exc:
            raise RequestError(f"cannot pack {folder} ({exc.code}): {exc}", code=exc.code) from None
        except OSError as exc:
            raise RequestError(f"cannot pack {folder}: {exc}", code="bad_request") from None

    def remove(self, name: str) -> dict[str, Any]:
        inst = self.installed.pop(name, None)
        if inst is None:
            raise RequestError(self._unknown(name), code="unknown_skill")
        self.registry.remove(name)
        self._store.kv_delete("packs", name)
        shutil.rmtree(self.root / name, ignore_errors=True)
        shutil.rmtree(self._runtime_root / f"{name}-{inst.info.version}", ignore_errors=True)
        self._audit("SKILL_REMOVED", name=name, version=inst.info.version)
        self._mesh.publish(SkillAnnounce((), False, (name,)))
        self._changed()
        return {"name": name, "removed": True}

    def publish(self, name: str) -> dict[str, Any]:
        inst = self.installed.get(name)
        if inst is None:
            raise RequestError(self._unknown(name), code="unknown_skill")
        self._announce_delta((inst.info,))
        self._audit(
            "SKILL_PUBLISHED", name=name, version=inst.info.version, pack_id=inst.info.pack_id
        )
        return {"name": name, "version": inst.info.version, "pack_id": inst.info.pack_id}

    def _register(self, inst: Installed) -> None:
        self.installed[inst.info.name] = inst
        self.registry.put(PackSkill(self, inst))

    def runtime_copy(self, inst: Installed) -> Path:
        """A world-readable copy of the pack for the sandbox (which runs as an unprivileged
        user that cannot enter the 0700 state dir)."""
        dest = self._runtime_root / f"{inst.info.name}-{inst.info.version}"
        marker = dest / ".pack_id"
        if marker.is_file() and marker.read_text() == inst.info.pack_id:
            return dest
        for d in (self._runtime_base, self._runtime_root):
            d.mkdir(mode=0o711, exist_ok=True)
            os.chmod(d, 0o711)
        tmp = Path(tempfile.mkdtemp(dir=self._runtime_root))
        shutil.copytree(inst.folder, tmp, dirs_exist_ok=True)
        for path in [tmp, *tmp.rglob("*")]:
            mode = 0o755 if path.is_dir() else 0o644
            os.chmod(path, mode)
        (tmp / ".pack_id").write_text(inst.info.pack_id)
        os.chmod(tmp / ".pack_id", 0o644)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ---- queries ------------------------------------------------------------------------

    def skill_spec(self, name: str) -> SkillSpec | None:
        """The spec of a skill this node can run (built-in or installed), else the newest
        one the mesh announced; None if nobody knows it."""
        with contextlib.suppress(SkillError):
            return self.registry.get(name).spec
        return self.spec_for(name)

    def spec_for(self, name: str) -> SkillSpec | None:
        """The spec of a skill known anywhere in the mesh (installed here first, else the
        newest version announced), for checking a task's parameters at its origin."""
        inst = self.installed.get(name)
        if inst is not None:
            return inst.manifest.spec
        best: PackInfo | None = None
        for _, info in self.catalog.announced(name):
            if best is None or compare_versions(info.version, best.version) > 0:
                best = info
        if best is None:
            return None
        with contextlib.suppress(PackError):
            return Manifest.from_dict(best.manifest).spec
        return None

    def revoked_skill(self, name: str) -> str:
        """Why a skill that is not installed here may not be delegated: every pack of it
        the mesh announces is revoked ('' when it may be delegated)."""
        if name in self.installed or name in self.registry:
            return ""
        infos = [info for _, info in self.catalog.announced(name)]
        reasons = [self.revoked_reason(i) for i in infos]
        return reasons[0] if infos and all(reasons) else ""

    def needs_approval(self, name: str) -> bool:
        inst = self.installed.get(name)
        if inst is not None:
            return inst.manifest.permissions.needs_approval
        for _, info in self.catalog.announced(name):
            with contextlib.suppress(PackError):
                return Manifest.from_dict(info.manifest).permissions.needs_approval
        return False

    def runnable_here(self, name: str) -> bool:
        """True if this node's role may run ``name`` (the manifest's roles and
        capabilities); built-in in-process skills always may."""
        inst = self.installed.get(name)
        if inst is None:
            return True
        m = inst.manifest
        role = self._role
        if m.roles and role.name not in m.roles:
            return False
        return all(c in role.capabilities for c in m.spec.capabilities)

    def known_names(self) -> list[str]:
        names = set(self.registry.names())
        for _, packs in self.catalog.items():
            names.update(packs)
        return sorted(names)

    def describe(self, name: str) -> dict[str, Any]:
        inst = self.installed.get(name)
        spec = self.spec_for(name)
        if spec is None:
            with contextlib.suppress(SkillError):
                spec = self.registry.get(name).spec
        if spec is None:
            raise RequestError(self._unknown(name), code="unknown_skill")
        stats = self._runs.stats().get(name)
        out: dict[str, Any] = {
            **spec.to_dict(),
            "installed": inst is not None,
            "builtin": inst is None and name in self.registry,
            "stats": stats.to_dict() if stats else None,
        }
        if inst is not None:
            m = inst.manifest
            out.update(
                pack_id=inst.info.pack_id,
                signer=inst.info.signer.hex(),
                size=inst.info.size,
                entry=m.entry,
                roles=list(m.roles),
                permissions={
                    "network": m.permissions.network,
                    "internet": m.permissions.internet,
                    "privileged": m.permissions.privileged,
                    "read": list(m.permissions.read),
                    "write": list(m.permissions.write),
                },
                limits={
                    k: getattr(m.limits, k)
                    for k in (
                        "cpu_seconds",
                        "memory_mb",
                        "wall_seconds",
                        "open_files",
                        "processes",
                        "output_kb",
                    )
                },
                expires=m.expires,
                installed_at=inst.installed_at,
                runnable_here=self.runnable_here(name),
            )
        out["holders"] = sorted(
            self._mesh.name_of(node) for node, _ in self.catalog.announced(name)
        )
        return out

    def listing(self, mesh: bool) -> list[dict[str, Any]]:
        stats = self._runs.stats()
        rows: list[dict[str, Any]] = []
        me = self._identity.node_id
        for name in sorted(self.registry.names()):
            inst = self.installed.get(name)
            st = stats.get(name)
            rows.append(
                {
                    "node": self._mesh.name_of(me),
                    "node_id": me,
                    "name": name,
                    "version": inst.info.version if inst else self.registry.get(name).spec.version,
                    "kind": "pack" if inst else "builtin",
                    "pack_id": inst.info.pack_id if inst else None,
                    "runs": st.runs if st else 0,
                    "failures": st.failures if st else 0,
                    "mean_duration": st.mean_duration if st else 0.0,
                }
            )
        if mesh:
            for node, packs in sorted(self.catalog.items()):
                for name, info in sorted(packs.items()):
                    rows.append(
                        {
                            "node": self._mesh.name_of(node),
                            "node_id": node,
                            "name": name,
                            "version": info.version,
                            "kind": "pack",
                            "pack_id": info.pack_id,
                        }
                    )
        return rows

    def _unknown(self, name: str) -> str:
        return f"unknown skill {name!r}; known: {', '.join(self.known_names()) or 'none'}"

    # ---- the mesh -------------------------------------------------------------------------

    def inventory(self) -> SkillAnnounce:
        return SkillAnnounce(tuple(i.info for i in self.installed.values()), True)

    def member_joined(self, node_id: str) -> None:
        """Tell a member that joined what we hold and every revocation we keep."""
        self._mesh.send(node_id, self.inventory())
        records = self.revocations.records()
        for i in range(0, len(records), MAX_REVOKED):
            self._mesh.send(node_id, SkillRevoke(tuple(records[i : i + MAX_REVOKED])))

    def member_gone(self, node_id: str) -> None:
        self.catalog.forget(node_id)

    def _announce_delta(self, infos: tuple[PackInfo, ...]) -> None:
        self._mesh.publish(SkillAnnounce(infos, False))

    def receive(self, sender: str, payload: object, msg_id: bytes, corr: bytes | None) -> None:
        if isinstance(payload, SkillAnnounce):
            self._on_announce(sender, payload)
        elif isinstance(payload, SkillFetch):
            self._on_fetch(sender, payload, msg_id)
        elif isinstance(payload, SkillChunk):
            waiting = self._fetches.get(corr or b"")
            if waiting is None or waiting[0] != sender:
                # Late (after a timeout) or never asked for from this member.
                self._refused(sender, "chunk_unsolicited")
                return
            del self._fetches[corr or b""]
            if not waiting[1].done():
                waiting[1].set_result(payload)
        elif isinstance(payload, SkillRevoke):
            self._on_revoke(sender, payload)

    def _on_announce(self, sender: str, msg: SkillAnnounce) -> None:
        update = self.catalog.apply(
            sender, msg.packs, full=msg.full, removed=msg.removed, trusted=self._announced_trusted
        )
        for name, reason in update.refused:
            self._refused(sender, reason, pack=name)
        if not self._cfg.auto_install:
            return
        for info in update.kept:
            have = self.installed.get(info.name)
            newer = have is None or compare_versions(info.version, have.info.version) > 0
            # A delta is a publication: install it. A full inventory only updates what we
            # already have (a joiner installs others on request).
            if newer and (not msg.full or have is not None) and self._worth_fetching(info):
                busy = self._reserve_fetch(info)
                if busy is not None:
                    self._refused(sender, busy, pack=info.name, size=info.size)
                    continue
                task = asyncio.get_running_loop().create_task(self._auto_install(info, sender))
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)

    def _worth_fetching(self, info: PackInfo) -> bool:
        return (
            info.name not in self._installing
            and info.pack_id not in self._fetching
            and self.trusted(info.signer)
            and not self.revoked_reason(info)
        )

    def _reserve_fetch(self, info: PackInfo) -> str | None:
        """Take a fetch slot for ``info`` (released when its fetch ends), or say why not
        (a refusal reason): it is larger than a pack may be, or there is no room among
        the fetches running (``max_fetches``, ``max_fetch_bytes``)."""
        if info.size > self._cfg.max_pack_bytes:
            return "fetch_too_large"
        if info.pack_id in self._fetching or len(self._fetching) >= self._cfg.max_fetches:
            return "fetch_busy"
        if sum(self._fetching.values()) + info.size > self._cfg.max_fetch_bytes:
            return "fetch_busy"
        self._fetching[info.pack_id] = info.size
        return None

    def _on_fetch(self, sender: str, req: SkillFetch, msg_id: bytes) -> None:
        """Serve one chunk of a pack we hold: only the bytes asked for are read."""
        chunk = SkillChunk(req.pack_id, req.offset, 0, b"", "no such pack here")
        path = self._archive_path(req.pack_id)
        if path is not None:
            length = max(0, min(req.length, CHUNK_BYTES))
            try:
                with path.open("rb") as f:
                    total = os.fstat(f.fileno()).st_size
                    f.seek(min(req.offset, total))
                    chunk = SkillChunk(req.pack_id, req.offset, total, f.read(length))
            except OSError:
                pass
        self._mesh.reply(sender, chunk, msg_id)

    def _archive_path(self, pack_id: str) -> Path | None:
        for inst in self.installed.values():
            if inst.info.pack_id == pack_id:
                return self.root / inst.info.name / f"{inst.info.version}.pack"
        return None

    async def install_from_mesh(self, name: str) -> dict[str, Any]:
        """``meshctl skill install NAME``: fetch the newest announced version."""
        best: tuple[PackInfo, str] | None = None
        for node, info in self.catalog.announced(name):
            if best is None or compare_versions(info.version, best[0].version) > 0:
                best = (info, node)
        if best is None:
            raise RequestError(f"no member announces a skill {name!r}", code="unknown_skill")
        reason = self._reserve_fetch(best[0])
        if reason is not None:
            raise RequestError(
                f"cannot fetch {name} {best[0].version} ({best[0].size} bytes) now: "
                + _REASON_TEXT[reason],
                code="too_large" if reason == "fetch_too_large" else "busy",
            )
        return await self._fetch_install(best[0], best[1], raise_errors=True)

    async def _auto_install(self, info: PackInfo, holder: str) -> None:
        await self._fetch_install(info, holder)

    async def _fetch_install(
        self, info: PackInfo, holder: str, raise_errors: bool = False
    ) -> dict[str, Any]:
        """Fetch and install ``info`` (its fetch slot taken: :meth:`_reserve_fetch`)."""
        self._installing.add(info.name)
        path: Path | None = None
        try:
            holders = [holder] + [
                n for n, p in self.catalog.items() if n != holder and p.get(info.name) == info
            ]
            path = await self.fetch(info, holders)
            # Whole, and its SHA-256 is the pack id: the announced (bounded) size.
            data = path.read_bytes()
            return self.install_bytes(data, source=f"mesh {self._mesh.name_of(holder)}")
        except RequestError as exc:
            _log.warning("pack_fetch_failed", name=info.name, error=str(exc))
            if raise_errors:
                raise
            return {}
        finally:
            self._installing.discard(info.name)
            self._fetching.pop(info.pack_id, None)
            if path is not None:
                path.unlink(missing_ok=True)

    async def fetch(self, info: PackInfo, holders: list[str]) -> Path:
        """The archive, streamed into a file under :attr:`fetch_dir` from the first holder
        that serves it all, every chunk checked as it arrives and the SHA-256 against the
        pack id at the end (:class:`~meshd.skills.fetch.Download`). The caller removes
        the file; a refused fetch leaves none."""
        last = "no holder"
        self.fetch_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.fetch_dir / f"{info.pack_id}.part"
        for node in holders:
            try:
                download = Download(info, self._cfg.max_pack_bytes)
                with path.open("wb") as f:
                    while not download.done:
                        chunk = await self._request(node, download.request())
                        f.write(download.accept(chunk))
                download.finish()
                return path
            except FetchRefused as exc:
                path.unlink(missing_ok=True)
                last = f"{self._mesh.name_of(node)}: {exc}"
                self._refused(node, f"fetch_{exc.code}", pack=info.name)
                self._audit(
                    "SKILL_REFUSED",
                    source=f"mesh {node}",
                    source_name=self._mesh.name_of(node),
                    name=info.name,
                    pack_id=info.pack_id,
                    code=exc.code,
                    reason=str(exc),
                )
                if exc.code == "too_large" and info.size > self._cfg.max_pack_bytes:
                    break  # no holder can help
            except RequestError as exc:
                path.unlink(missing_ok=True)
                last = f"{self._mesh.name_of(node)}: {exc}"
            except OSError as exc:
                path.unlink(missing_ok=True)
                raise RequestError(
                    f"cannot write {path}: {exc.strerror}", code="fetch_failed"
                ) from None
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        raise RequestError(
            f"could not fetch {info.name} {info.version}: {last}", code="fetch_failed"
        )

    async def _request(self, node: str, req: SkillFetch) -> SkillChunk:
        msg_id = os.urandom(16)
        fut: asyncio.Future[SkillChunk] = asyncio.get_running_loop().create_future()
        self._fetches[msg_id] = (node, fut)
        try:
            self._mesh.request(node, req, msg_id)
            return await asyncio.wait_for(fut, CHUNK_TIMEOUT)
        except TimeoutError:
            raise RequestError(f"no chunk within {CHUNK_TIMEOUT:g} s", "timeout") from None
        finally:
            self._fetches.pop(msg_id, None)

    def _audit(self, event: str, /, **fields: Any) -> None:
        self._events.append(event, fields, audit=True)

    # ---- local files --------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        p = Path(path)
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise RequestError(f"{path} is not a regular file", code="bad_request")
            if st.st_size > self._cfg.max_pack_bytes:
                raise RequestError(
                    f"{path} is {st.st_size} bytes, over the pack limit", code="too_large"
                )
            return p.read_bytes()
        except OSError as exc:
            raise RequestError(f"cannot read {path}: {exc.strerror}", code="bad_request") from None

    def inspect_file(self, data: bytes) -> VerifiedPack:
        try:
            return inspect_pack(data)
        except PackError as exc:
            raise RequestError(f"not a valid pack ({exc.code}): {exc}", code=exc.code) from None


#: What a refusal reason means, for an operator.
_REASON_TEXT: Final = {
    rev.BAD_SIGNATURE: "the signature does not verify",
    rev.NOT_ENTITLED: "the signer may not revoke that",
    rev.UNKNOWN_SIGNER: "the signer is not a key this node trusts",
    rev.LIST_FULL: "the revocation list is full ([skills] max_revocations)",
    rev.OVER_KEY_LIMIT: "too many revocations by that key ([skills] max_revocations_per_key)",
    cat.UNTRUSTED: "the pack's signer is not trusted here",
    cat.MEMBER_LIMIT: "that member announced too many packs ([skills] max_packs_per_member)",
    cat.CATALOG_FULL: "the mesh catalog is full ([skills] max_catalog_packs/_bytes)",
    "fetch_too_large": "the pack is larger than [skills] max_pack_bytes",
    "fetch_busy": "too many fetches at once ([skills] max_fetches, max_fetch_bytes)",
}


def _record_key(rec: Revocation) -> str:
    return f"{rec.kind.value}:{rec.target}:{rec.by.hex()}"


def _record_to(held: Held, now: float) -> dict[str, Any]:
    rec = held.record
    return {
        "kind": rec.kind.value,
        "target": rec.target,
        "by": rec.by,
        "at_ms": rec.at_ms,
        "sig": rec.sig,
        "revoker": held.revoker,
        "sent_by": held.sent_by,
        "kept_at": now,
    }


def _record_from(value: dict[str, Any]) -> Revocation:
    rec = Revocation(
        RevocationKind(value["kind"]),
        str(value["target"]),
        bytes(value["by"]),
        int(value["at_ms"]),
        bytes(value["sig"]),
    )
    if len(rec.by) != 32 or len(rec.sig) != 64 or len(rec.target) != 64:
        raise ValueError("a malformed revocation record")
    return rec


def _info_to(info: PackInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "pack_id": info.pack_id,
        "size": info.size,
        "signer": info.signer,
        "manifest": info.manifest,
    }


def _info_from(rec: dict[str, Any]) -> PackInfo:
    return PackInfo(
        str(rec["name"]),
        str(rec["version"]),
        str(rec["pack_id"]),
        int(rec["size"]),
        bytes(rec["signer"]),
        dict(rec["manifest"]),
    )


def _key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RequestError(
            f"bad key {text!r}: expected an Ed25519 public key as 64 hex digits "
            "(see `meshctl skill trust list`)",
            code="bad_request",
        )
    return key


def _pack_id(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise RequestError(
            f"bad pack id {text!r}: expected 64 hex digits (SHA-256)", code="bad_request"
        )
    return value
