from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from meshd.identity import Identity, node_id_for
from meshd.skills import archive as packmod
from meshd.skills.archive import PackError, pack_id
from meshd.skills.build import build_pack
from meshd.skills.install import install_pack, remove_pack
from meshd.skills.manifest import Manifest, compare_versions, parse_manifest
from meshd.skills.policy import Limits, Permissions
from meshd.skills.scaffold import new_skill
from meshd.skills.spec import ParamSpec, SkillSpec, validate_params
from meshd.skills.verify import VerifiedPack, inspect_pack, verify_pack

#: 2027-01-15T08:00:00Z, before the fixture's expiry (end of 2027-12-31 UTC).
NOW = 1_800_000_000.0
END_OF_2027 = 1_830_297_600.0  # 2028-01-01T00:00:00Z

SKILL_TOML = """\
name = "tcp-check"
version = "{version}"
description = "Check that a TCP port answers."
entry = "main.py"
idempotent = true
expires = "2027-12-31"
[requires]
capabilities = ["network.probe"]
roles = []
[permissions]
network = true
internet = false
privileged = false
read = ["/etc/hostname"]
write = []
[limits]
cpu_seconds = 10
memory_mb = 256
wall_seconds = 60
open_files = 64
processes = 16
output_kb = 256
[[params]]
name = "host"
type = "str"
required = true
description = "Host name or address."
[[params]]
name = "port"
type = "int"
default = 22
minimum = 1
maximum = 65535
"""

MAIN_PY = "from lib.helper import probe\n\ndef run(ctx):\n    return probe(ctx.params)\n"


def write_skill(folder: Path, version: str = "1.2.0", main: str = MAIN_PY) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "skill.toml").write_text(SKILL_TOML.format(version=version))
    (folder / "main.py").write_text(main)
    (folder / "lib" / "helper.py").write_text("def probe(params):\n    return {'ok': True}\n")
    (folder / "data.txt").write_bytes(b"\x00\x01binary data\xff")
    return folder


@pytest.fixture
def ident() -> Identity:
    return Identity.generate()


@pytest.fixture
def skill(tmp_path: Path) -> Path:
    return write_skill(tmp_path / "src")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "installed"


@pytest.fixture
def data(skill: Path, ident: Identity) -> bytes:
    return build_pack(skill, ident, now=NOW)


def verify(data: bytes, ident: Identity, **overrides: Any) -> VerifiedPack:
    trusted: Callable[[bytes], bool] = lambda key: key == ident.ed25519_pk  # noqa: E731
    kwargs: dict[str, Any] = {
        "trusted": trusted,
        "revoked_keys": (),
        "revoked_packs": (),
        "installed_version": None,
        "installed_pack_id": None,
        "now": NOW,
    }
    kwargs.update(overrides)
    return verify_pack(data, **kwargs)


def snapshot(root: Path) -> list[tuple[str, int]]:
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def assert_refused(data: bytes, ident: Identity, root: Path, code: str, **kw: Any) -> PackError:
    """verify then install: refused with ``code`` and ``root`` unchanged."""
    before = snapshot(root)
    with pytest.raises(PackError) as info:
        install_pack(verify(data, ident, **kw), root)
    assert info.value.code == code, str(info.value)
    assert snapshot(root) == before
    return info.value


def assert_build_refused(
    folder: Path, ident: Identity, root: Path, code: str, now: float = NOW
) -> PackError:
    with pytest.raises(PackError) as info:
        install_pack(verify(build_pack(folder, ident, now=now), ident), root)
    assert info.value.code == code, str(info.value)
    assert snapshot(root) == []
    return info.value


# -- archive surgery helpers --------------------------------------------------------------


def members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append((m, f.read() if f else b""))
    return out


def retar(items: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, content in items:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return out.getvalue()


def modify(data: bytes, name: str, change: Callable[[bytes], bytes]) -> bytes:
    items = members(data)
    assert name in [m.name for m, _ in items]
    return retar([(m, change(c) if m.name == name else c) for m, c in items])


def with_member(data: bytes, info: tarfile.TarInfo, content: bytes = b"") -> bytes:
    return retar([*members(data), (info, content)])


def flip_first_byte(content: bytes) -> bytes:
    return bytes([content[0] ^ 1]) + content[1:]


def canonical(obj: object) -> bytes:
    """Canonical JSON as the module docstring defines it."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def change_pack_json(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    def edit(raw: bytes) -> bytes:
        obj = json.loads(raw)
        change(obj)
        return canonical(obj)

    return modify(data, "pack.json", edit)


# -- the round trip -----------------------------------------------------------------------


def test_build_inspect_verify_install_round_trip(
    data: bytes, skill: Path, ident: Identity, root: Path
) -> None:
    inspected = inspect_pack(data)
    pack = verify(data, ident)
    assert inspected == pack
    assert pack.pack_id == pack_id(data) == hashlib.sha256(data).hexdigest()
    assert pack.signer == ident.ed25519_pk
    assert pack.signer_id == ident.node_id == node_id_for(ident.ed25519_pk)
    assert sorted(pack.files) == ["data.txt", "lib/helper.py", "main.py", "skill.toml"]
    assert pack.manifest_text == (skill / "skill.toml").read_text()
    m = pack.manifest
    assert (pack.name, pack.version, m.entry, m.roles) == ("tcp-check", "1.2.0", "main.py", ())
    assert m.spec.idempotent and m.spec.capabilities == ("network.probe",)
    assert m.spec.params == (
        ParamSpec("host", "str", "Host name or address.", required=True),
        ParamSpec("port", "int", default=22, minimum=1, maximum=65535),
    )
    assert m.permissions == Permissions(network=True, read=("/etc/hostname",))
    assert m.limits == Limits(10, 256, 60, 64, 16, 256)
    assert m.expires == END_OF_2027

    folder = install_pack(pack, root)
    assert folder == root / "tcp-check" / "1.2.0"
    for rel in pack.files:
        assert (folder / rel).read_bytes() == (skill / rel).read_bytes()
        assert stat.S_IMODE((folder / rel).stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "lib").stat().st_mode) == 0o755
    assert sorted(p.name for p in root.iterdir()) == ["tcp-check"]  # no temp folder left

    # A reinstall of the same pack is accepted and leaves the folder untouched.
    before = snapshot(root)
    again = verify(data, ident, installed_version="1.2.0", installed_pack_id=pack.pack_id)
    assert install_pack(again, root) == folder
    assert snapshot(root) == before


def test_archive_layout_is_fixed(data: bytes) -> None:
    items = members(data)
    assert [m.name for m, _ in items] == [
        "pack.json",
        "signature",
        "files/data.txt",
        "files/lib/helper.py",
        "files/main.py",
        "files/skill.toml",
    ]
    for m, _ in items:
        assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) == (0o644, 0, 0, 0, "", "")
        assert m.isreg()
    raw_json, signature = items[0][1], items[1][1]
    obj = json.loads(raw_json)
    assert canonical(obj) == raw_json
    assert sorted(obj) == ["format", "hashes", "manifest", "name", "signer", "version"]
    assert obj["format"] == 1 and obj["name"] == "tcp-check" and obj["version"] == "1.2.0"
    assert obj["hashes"]["main.py"] == hashlib.sha256(MAIN_PY.encode()).hexdigest()
    assert len(signature) == 64
    key = bytes.fromhex(obj["signer"])
    from nacl.signing import VerifyKey

    VerifyKey(key).verify(b"meshd/skill-pack/v1\x00" + raw_json, signature)
    assert len(data) % 512 == 0 and data.endswith(b"\0" * 1024)


def test_same_folder_and_key_give_the_same_bytes(
    data: bytes, skill: Path, ident: Identity, tmp_path: Path
) -> None:
    assert build_pack(skill, ident, now=NOW) == data
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(skill, copy)
    os.utime(copy / "main.py", (1, 1))
    os.chmod(copy / "main.py", 0o755)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (copy / "lib" / "helper.pyc").write_bytes(b"junk")
    assert build_pack(copy, ident, now=NOW + 1000) == data
    assert build_pack(copy, Identity.generate(), now=NOW) != data


def test_the_scaffold_builds_verifies_and_runs(tmp_path: Path, ident: Identity, root: Path) -> None:
    folder = tmp_path / "hello"
    new_skill(folder, "hello")
    pack = verify(build_pack(folder, ident), ident)
    assert pack.name == "hello" and pack.manifest.entry == "main.py"
    assert pack.manifest.spec.idempotent
    installed = install_pack(pack, root)

    loader = importlib.util.spec_from_file_location("scaffold_main", installed / "main.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    progress: list[tuple[float, str]] = []
    checkpoints: list[bytes] = []
    ctx = SimpleNamespace(
        params=validate_params(pack.manifest.spec, {"count": "2"}),
        progress=lambda pct, msg: progress.append((pct, msg)),
        checkpoint=checkpoints.append,
    )
    assert module.run(ctx) == {"lines": ["1: hello", "2: hello"], "count": 2}
    assert [pct for pct, _ in progress] == [50.0, 100.0]
    assert checkpoints == [b"1", b"2"]


def test_the_scaffold_refuses_a_non_empty_folder_and_a_bad_name(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(PackError) as info:
        new_skill(tmp_path / "taken", "hello")
    assert info.value.code == "exists"
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]
    with pytest.raises(PackError) as info:
        new_skill(tmp_path / "fresh", "1bad")
    assert info.value.code == "bad_manifest"
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "empty").mkdir()
    new_skill(tmp_path / "empty", "hello")  # an empty folder is fine
    assert sorted(os.listdir(tmp_path / "empty")) == ["main.py", "skill.toml"]


# -- tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["main.py", "lib/helper.py", "data.txt", "skill.toml"])
def test_one_byte_changed_in_a_file_is_refused(
    data: bytes, ident: Identity, root: Path, rel: str
) -> None:
    bad = modify(data, f"files/{rel}", flip_first_byte)
    err = assert_refused(bad, ident, root, "hash_mismatch")
    assert rel in str(err)


def test_a_changed_manifest_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    def edit(obj: dict[str, Any]) -> None:
        obj["manifest"] = obj["manifest"].replace("network = true", "network = false")

    assert_refused(change_pack_json(data, edit), ident, root, "bad_signature")


def test_a_changed_hash_list_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    evil = b"print('evil')\n"

    def edit(obj: dict[str, Any]) -> None:
        obj["hashes"]["main.py"] = hashlib.sha256(evil).hexdigest()

    bad = modify(change_pack_json(data, edit), "files/main.py", lambda _: evil)
    assert_refused(bad, ident, root, "bad_signature")


def test_one_byte_changed_in_the_signature_is_refused(
    data: bytes, ident: Identity, root: Path
) -> None:
    assert_refused(modify(data, "signature", flip_first_byte), ident, root, "bad_signature")


def test_a_signature_of_the_wrong_size_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    assert_refused(modify(data, "signature", lambda s: s[:63]), ident, root, "bad_archive")


def test_another_signer_key_in_pack_json_is_refused(
    data: bytes, ident: Identity, root: Path
) -> None:
    other = Identity.generate()

    def edit(obj: dict[str, Any]) -> None:
        obj["signer"] = other.ed25519_pk.hex()

    bad = change_pack_json(data, edit)
    assert_refused(bad, other, root, "bad_signature")


# -- trust, revocation, versions, expiry ----------------------------------------------------


def test_a_pack_signed_by_an_untrusted_key_is_refused(
    data: bytes, ident: Identity, root: Path
) -> None:
    trusted_b = Identity.generate()
    err = assert_refused(data, trusted_b, root, "untrusted_signer")
    assert ident.node_id in str(err)


def test_a_revoked_key_is_refused_even_when_trusted(
    data: bytes, ident: Identity, root: Path
) -> None:
    assert_refused(data, ident, root, "revoked_signer", revoked_keys={ident.ed25519_pk})


def test_a_revoked_pack_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    assert_refused(data, ident, root, "revoked_pack", revoked_packs=[pack_id(data)])
    assert_refused(data, ident, root, "revoked_pack", revoked_packs=[pack_id(data).upper()])


def test_a_revoked_pack_cannot_be_rewrapped(data: bytes, ident: Identity, root: Path) -> None:
    items = {m.name: c for m, c in members(data)}
    raw_json, signature = items.pop("pack.json"), items.pop("signature")
    files = {name.removeprefix("files/"): c for name, c in items.items()}
    pretty = json.dumps(json.loads(raw_json), indent=1).encode()
    revoked = [pack_id(data)]
    for variant in (
        data + b"\0" * 512,  # trailing zero blocks
        data + b"junk",  # trailing bytes
        retar(members(data)),  # the same members, written by another tar writer
        packmod._write_archive(raw_json + b" ", signature, files),  # JSON not canonical
        packmod._write_archive(pretty, signature, files),
    ):
        assert pack_id(variant) not in revoked
        assert_refused(variant, ident, root, "bad_archive", revoked_packs=revoked)
    assert packmod._write_archive(raw_json, signature, files) == data


def test_a_lower_version_is_refused(skill: Path, ident: Identity, root: Path) -> None:
    data = build_pack(skill, ident, now=NOW)
    assert_refused(data, ident, root, "rollback", installed_version="1.3.0")
    assert_refused(data, ident, root, "rollback", installed_version="1.10.0")
    for older in ("1.2.0-rc.1", "1.1.9", "0.9.0"):
        assert verify(data, ident, installed_version=older).version == "1.2.0"


def test_the_same_version_with_other_content_is_refused(
    data: bytes, tmp_path: Path, ident: Identity, root: Path
) -> None:
    other_src = write_skill(tmp_path / "other", main="def run(ctx):\n    return {}\n")
    other = build_pack(other_src, ident, now=NOW)
    assert pack_id(other) != pack_id(data)
    kw = {"installed_version": "1.2.0", "installed_pack_id": pack_id(data)}
    assert_refused(other, ident, root, "same_version_different_content", **kw)
    # Unknown installed content: refused too.
    assert_refused(data, ident, root, "same_version_different_content", installed_version="1.2.0")
    assert verify(data, ident, **kw).pack_id == pack_id(data)


def test_an_expired_pack_is_refused(data: bytes, skill: Path, ident: Identity, root: Path) -> None:
    assert verify(data, ident, now=END_OF_2027 - 1).name == "tcp-check"
    assert_refused(data, ident, root, "expired", now=END_OF_2027)
    assert_build_refused(skill, ident, root, "expired", now=END_OF_2027 + 1)


# -- unsafe members ---------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("info", "code"),
    [
        (member("/etc/cron.d/evil"), "unsafe_path"),
        (member("files//etc/evil"), "unsafe_path"),
        (member("../evil"), "unsafe_path"),
        (member("files/../../evil"), "unsafe_path"),
        (member("files/lib/../../../evil"), "unsafe_path"),
        (member("files/bad name.py"), "unsafe_path"),
        (member("files/sym", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (member("files/sym", tarfile.SYMTYPE, "../../x"), "link"),
        (member("files/hard", tarfile.LNKTYPE, "files/main.py"), "link"),
        (member("files/fifo", tarfile.FIFOTYPE), "special_file"),
        (member("files/tty", tarfile.CHRTYPE), "special_file"),
        (member("files/disk", tarfile.BLKTYPE), "special_file"),
        (member("README"), "bad_archive"),
    ],
    ids=lambda v: v.name if isinstance(v, tarfile.TarInfo) else v,
)
def test_unsafe_members_are_refused(
    data: bytes, ident: Identity, root: Path, info: tarfile.TarInfo, code: str
) -> None:
    assert_refused(with_member(data, info, b"x"), ident, root, code)


def test_a_duplicate_member_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    assert_refused(with_member(data, member("files/main.py"), b"x"), ident, root, "bad_archive")


@pytest.mark.parametrize(
    ("limit", "value"),
    [
        ("MAX_FILE_BYTES", 100),  # the manifest alone is larger
        ("MAX_MEMBERS", 5),  # the pack has 6
        ("MAX_TOTAL_BYTES", 500),  # so is the manifest file
        ("MAX_ARCHIVE_BYTES", 4096),
    ],
)
def test_packs_over_the_limits_are_refused(
    data: bytes,
    skill: Path,
    ident: Identity,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    value: int,
) -> None:
    monkeypatch.setattr(packmod, limit, value)
    assert_refused(data, ident, root, "too_large")
    assert_build_refused(skill, ident, root, "too_large")


def test_an_unlisted_file_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    err = assert_refused(
        with_member(data, member("files/extra.py"), b"x"), ident, root, "extra_file"
    )
    assert "extra.py" in str(err)


def test_a_missing_listed_file_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    items = [(m, c) for m, c in members(data) if m.name != "files/lib/helper.py"]
    err = assert_refused(retar(items), ident, root, "missing_file")
    assert "lib/helper.py" in str(err)


@pytest.mark.parametrize(
    "bad",
    [b"", b"not a tar archive at all" * 40, b"\0" * 1024],
    ids=["empty", "garbage", "zeros"],
)
def test_what_is_not_a_pack_is_refused(bad: bytes, ident: Identity, root: Path) -> None:
    assert_refused(bad, ident, root, "bad_archive")


@pytest.mark.parametrize("name", ["pack.json", "signature"])
def test_a_pack_without_its_metadata_is_refused(
    data: bytes, ident: Identity, root: Path, name: str
) -> None:
    items = [(m, c) for m, c in members(data) if m.name != name]
    assert_refused(retar(items), ident, root, "bad_archive")


@pytest.mark.parametrize(
    "change",
    [
        lambda obj: obj.update(format=2),
        lambda obj: obj.update(extra=1),
        lambda obj: obj.pop("hashes"),
        lambda obj: obj.update(signer="00"),
        lambda obj: obj["hashes"].update({"main.py": "nothex"}),
    ],
    ids=["format", "extra-key", "no-hashes", "short-signer", "bad-hash"],
)
def test_a_malformed_pack_json_is_refused(
    data: bytes, ident: Identity, root: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    assert_refused(change_pack_json(data, change), ident, root, "bad_archive")


def test_pack_json_paths_are_checked(data: bytes, ident: Identity, root: Path) -> None:
    def listed(path: str) -> Callable[[dict[str, Any]], None]:
        return lambda obj: obj["hashes"].update({path: "0" * 64})

    for path in ("../evil", "/abs", "main.py/x"):
        assert_refused(change_pack_json(data, listed(path)), ident, root, "unsafe_path")


def test_a_manifest_that_disagrees_with_pack_json_is_refused(
    data: bytes, ident: Identity, root: Path
) -> None:
    err = assert_refused(
        change_pack_json(data, lambda obj: obj.update(version="9.9.9")),
        ident,
        root,
        "bad_manifest",
    )
    assert "version" in str(err)


def test_a_bad_manifest_inside_a_pack_is_refused(data: bytes, ident: Identity, root: Path) -> None:
    def edit(obj: dict[str, Any]) -> None:
        obj["manifest"] += "colour = 'blue'\n"

    err = assert_refused(change_pack_json(data, edit), ident, root, "bad_manifest")
    assert "colour" in str(err) and "skill.toml" in str(err)


# -- the source folder ------------------------------------------------------------------


def test_build_refuses_a_symlink(skill: Path, ident: Identity, root: Path) -> None:
    (skill / "lib" / "passwd").symlink_to("/etc/passwd")
    err = assert_build_refused(skill, ident, root, "link")
    assert "passwd" in str(err)


def test_build_refuses_a_fifo(skill: Path, ident: Identity, root: Path) -> None:
    os.mkfifo(skill / "pipe")
    assert_build_refused(skill, ident, root, "special_file")


@pytest.mark.parametrize("name", ["bad name.py", "-flag.py", "naïve.py", "a:b"])
def test_build_refuses_a_name_that_is_not_plain(
    skill: Path, ident: Identity, root: Path, name: str
) -> None:
    (skill / name).write_text("x")
    assert_build_refused(skill, ident, root, "unsafe_path")


def test_build_refuses_a_folder_without_a_manifest(
    tmp_path: Path, ident: Identity, root: Path
) -> None:
    (tmp_path / "bare").mkdir()
    err = assert_build_refused(tmp_path / "bare", ident, root, "missing_file")
    assert "skill.toml" in str(err)
    assert_build_refused(tmp_path / "nowhere", ident, root, "missing_file")


def test_build_refuses_a_missing_entry_file(skill: Path, ident: Identity, root: Path) -> None:
    (skill / "main.py").unlink()
    err = assert_build_refused(skill, ident, root, "missing_file")
    assert "skill.toml" in str(err) and "entry" in str(err) and "main.py" in str(err)


def rewrite_manifest(skill: Path, old: str, new: str) -> None:
    path = skill / "skill.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("idempotent = true", "idempotnet = true", "did you mean 'idempotent'"),
        ("cpu_seconds = 10", "cpu_second = 10", "limits.cpu_second"),
        ("network = true", "netwrok = true", "permissions.netwrok"),
        ("roles = []", "role = []", "requires.role"),
        ('type = "str"', 'kind = "str"', "params[0].kind"),
        ('version = "1.2.0"', 'version = "1.2"', "version"),
        ('version = "1.2.0"', 'version = "1.2.0+build.5"', "version"),
        ('type = "str"', 'type = "string"', "params[0].type"),
        ("maximum = 65535", "maximum = 0", "params[1]"),
        ("default = 22", 'default = "ssh"', "params[1].default"),
        ("cpu_seconds = 10", "cpu_seconds = 0", "limits.cpu_seconds"),
        ("network = true", 'network = "yes"', "permissions.network"),
        ('read = ["/etc/hostname"]', 'read = ["etc/hostname"]', "permissions.read"),
        ('entry = "main.py"', 'entry = "../main.py"', "entry"),
        ('entry = "main.py"', 'entry = "data.txt"', "entry"),
        ('name = "tcp-check"', 'name = "tcp check"', "name"),
        ('name = "tcp-check"\n', "", "name: is required"),
        ('expires = "2027-12-31"', 'expires = "2027-12-31T10:00:00"', "expires"),
        ('expires = "2027-12-31"', 'expires = "next year"', "expires"),
        ("roles = []", 'roles = ["Team Lead"]', "requires.roles"),
        ('capabilities = ["network.probe"]', "capabilities = 3", "requires.capabilities"),
        (
            '[requires]\ncapabilities = ["network.probe"]\nroles = []',
            'requires = "all"',
            "requires: must be a table",
        ),
        ('description = "Check', 'description = ["Check', "not valid TOML"),
    ],
)
def test_build_refuses_a_bad_manifest(
    skill: Path, ident: Identity, root: Path, old: str, new: str, expect: str
) -> None:
    rewrite_manifest(skill, old, new)
    err = assert_build_refused(skill, ident, root, "bad_manifest")
    assert str(skill / "skill.toml") in str(err)
    assert expect in str(err)


# -- the manifest -----------------------------------------------------------------------


def test_a_minimal_manifest_gets_the_defaults() -> None:
    m = parse_manifest('name = "x"\nversion = "0.1.0"\nentry = "main.py"\n')
    assert m == Manifest(spec=SkillSpec("x", version="0.1.0"), entry="main.py")
    assert m.permissions == Permissions() and m.limits == Limits() and m.expires is None


@pytest.mark.parametrize(
    ("expires", "epoch"),
    [
        ('"2027-12-31"', END_OF_2027),
        ("2027-12-31", END_OF_2027),  # a TOML date
        ('"2027-12-31T23:00:00-01:00"', END_OF_2027),
        ("2027-12-31T23:00:00-01:00", END_OF_2027),  # a TOML datetime
        ('"2028-01-01T00:00:00Z"', END_OF_2027),
    ],
)
def test_expiry_forms(expires: str, epoch: float) -> None:
    text = f'name = "x"\nversion = "0.1.0"\nentry = "m.py"\nexpires = {expires}\n'
    assert parse_manifest(text).expires == epoch


def test_a_list_default_is_typed() -> None:
    text = (
        'name = "x"\nversion = "0.1.0"\nentry = "m.py"\n'
        '[[params]]\nname = "ports"\ntype = "list[str]"\ndefault = "22,80"\n'
    )
    assert parse_manifest(text).spec.params[0].default == ["22", "80"]


def test_errors_name_the_source() -> None:
    with pytest.raises(PackError) as info:
        parse_manifest('name = "x"\n', source="somewhere/skill.toml")
    assert str(info.value) == "somewhere/skill.toml: version: is required"
    assert info.value.code == "bad_manifest"


def test_manifest_dict_round_trip(data: bytes) -> None:
    m = inspect_pack(data).manifest
    wire = msgpack.unpackb(msgpack.packb(m.to_dict(), use_bin_type=True), raw=False)
    assert Manifest.from_dict(wire) == m


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(colour="blue"),
        lambda d: d.pop("entry"),
        lambda d: d["spec"].update(version="1.2"),
        lambda d: d["spec"].update(name="a/b"),
        lambda d: d["spec"]["params"][0].update(type="integer"),
        lambda d: d["limits"].update(memory_mb=-1),
        lambda d: d["permissions"].update(write=["relative"]),
        lambda d: d.update(expires="soon"),
        lambda d: d.update(roles="all"),
    ],
)
def test_manifest_from_dict_refuses_bad_input(
    data: bytes, change: Callable[[dict[str, Any]], None]
) -> None:
    d = inspect_pack(data).manifest.to_dict()
    change(d)
    with pytest.raises(PackError) as info:
        Manifest.from_dict(d)
    assert info.value.code == "bad_manifest"


# -- versions ---------------------------------------------------------------------------

ORDERED = [
    "0.9.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.9.0",
    "1.10.0",
    "2.0.0",
]


def test_compare_versions_follows_semver_precedence() -> None:
    for i, a in enumerate(ORDERED):
        for j, b in enumerate(ORDERED):
            expected = (i > j) - (i < j)
            assert compare_versions(a, b) == expected, (a, b)


@pytest.mark.parametrize("bad", ["1.2", "01.2.3", "1.2.3+build", "v1.2.3", "1.2.3\n", "1.2.3-"])
def test_compare_versions_refuses_bad_versions(bad: str) -> None:
    with pytest.raises(PackError) as info:
        compare_versions(bad, "1.0.0")
    assert info.value.code == "bad_manifest"


# -- installing and removing ------------------------------------------------------------


def fake_pack(files: Mapping[str, bytes], version: str = "1.0.0") -> VerifiedPack:
    spec = SkillSpec("evil", version=version)
    return VerifiedPack(
        manifest=Manifest(spec=spec, entry="main.py"),
        signer=b"\0" * 32,
        signer_id="0" * 32,
        pack_id="0" * 64,
        files=dict(files),
    )


@pytest.mark.parametrize(
    ("files", "version"),
    [
        ({"../escape.py": b"x"}, "1.0.0"),
        ({"/tmp/abs.py": b"x"}, "1.0.0"),
        ({"main.py": b"x"}, "../../../escape"),
        ({"main.py": b"x"}, "1.0.0/../.."),
    ],
)
def test_install_never_writes_outside_root(
    tmp_path: Path, files: Mapping[str, bytes], version: str
) -> None:
    root = tmp_path / "deep" / "root"
    with pytest.raises(PackError) as info:
        install_pack(fake_pack(files, version), root)
    assert info.value.code == "unsafe_path"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_remove_pack(data: bytes, tmp_path: Path, ident: Identity, root: Path) -> None:
    first = install_pack(verify(data, ident), root)
    newer = build_pack(write_skill(tmp_path / "newer", version="1.3.0"), ident, now=NOW)
    second = install_pack(verify(newer, ident, installed_version="1.2.0"), root)
    assert sorted(p.name for p in (root / "tcp-check").iterdir()) == ["1.2.0", "1.3.0"]
    assert remove_pack(root, "tcp-check", "1.2.0") is True
    assert not first.exists() and second.is_dir()
    assert remove_pack(root, "tcp-check") is True
    assert os.listdir(root) == []
    assert remove_pack(root, "tcp-check") is False
    with pytest.raises(PackError) as info:
        remove_pack(root, "../etc")
    assert info.value.code == "unsafe_path"


def test_verify_accepts_any_collection(data: bytes, ident: Identity) -> None:
    keys: Collection[bytes] = frozenset({Identity.generate().ed25519_pk})
    packs: Collection[str] = ("0" * 64,)
    pack = verify(data, ident, revoked_keys=keys, revoked_packs=packs)
    assert pack.name == "tcp-check"
