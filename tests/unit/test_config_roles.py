from __future__ import annotations

from pathlib import Path

import pytest

from meshd import config
from meshd.errors import ConfigError
from meshd.roles import get_role, load_roles

EXPECTED_ROLES = {"network-admin", "software-engineer", "devops", "team-lead", "observer"}


def test_every_shipped_role_loads_with_its_fields() -> None:
    roles = load_roles()
    assert set(roles) >= EXPECTED_ROLES
    for role in roles.values():
        assert role.description
        assert role.capabilities
        assert 0 <= role.priority <= 1000
    assert roles["observer"].priority == 0  # never leads
    assert roles["team-lead"].priority == max(r.priority for r in roles.values())


def test_unknown_role_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        get_role("wizard")
    message = str(exc.value)
    assert "wizard" in message
    for name in EXPECTED_ROLES:
        assert name in message


def test_site_roles_dir_adds_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "printer.toml").write_text(
        'name = "printer"\ndescription = "Prints"\npriority = 5\ncapabilities = ["print"]\n'
    )
    monkeypatch.setenv("MESHD_ROLES_DIR", str(tmp_path))
    assert get_role("printer").capabilities == ("print",)
    (tmp_path / "bad.toml").write_text('name = "bad"\n')
    with pytest.raises(ConfigError, match="incomplete"):
        load_roles()


def test_config_file_overrides_and_rejects_unknown(tmp_path: Path) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text(
        "[membership]\nheartbeat_interval = 0.5\n[discovery]\ninterfaces = ['eth1']\n"
        "[node]\nrole = 'devops'\nstate_dir = '/tmp/x'\n"
    )
    cfg = config.load_file(path)
    assert cfg.membership.heartbeat_interval == 0.5
    assert cfg.discovery.interfaces == ("eth1",)
    assert cfg.node.state_dir == Path("/tmp/x")
    assert cfg.transport == config.TransportConfig()  # untouched sections keep defaults

    path.write_text("[membership]\nheartbeat = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        config.load_file(path)
    path.write_text("[bogus]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        config.load_file(path)
    path.write_text("[membership]\nheartbeat_interval = 'fast'\n")
    with pytest.raises(ConfigError, match="number"):
        config.load_file(path)
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_file(path)
    with pytest.raises(ConfigError, match="not found"):
        config.load_file(tmp_path / "missing.toml")


def test_skills_bounds_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text("[skills]\nmax_packs_per_member = 8\nmax_fetches = 1\n")
    cfg = config.load_file(path)
    assert cfg.skills.max_packs_per_member == 8 and cfg.skills.max_fetches == 1
    assert cfg.skills.max_catalog_packs == config.SkillsConfig().max_catalog_packs
    for name in ("max_revocations", "max_fetch_bytes", "max_catalog_bytes"):
        path.write_text(f"[skills]\n{name} = 0\n")
        with pytest.raises(ConfigError, match=name):
            config.load_file(path)


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MESHD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", "/root")
    assert config.default_state_dir() == tmp_path / "meshd"
    monkeypatch.setenv("MESHD_STATE_DIR", "/srv/meshd")
    assert config.default_state_dir() == Path("/srv/meshd")


def test_timings_are_consistent() -> None:
    m = config.lan().membership
    # A crash must be declared within ~1.5 s: silence + direct + indirect probe.
    assert m.suspect_after + m.probe_timeout + m.indirect_timeout <= 1.5
    # One late heartbeat never triggers a suspicion.
    assert m.suspect_after >= 2 * m.heartbeat_interval


def test_the_readme_config_example_loads_with_its_documented_values(tmp_path: Path) -> None:
    # The README's [Configuration] example is a real file: every key in it exists, and
    # the value shown is the default (or what the comment says it is).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("## Configuration")
    block = readme[
        readme.index("```toml", start) + len("```toml") : readme.index("```\n", start + 1)
    ]
    path = tmp_path / "example.toml"
    path.write_text(block)
    cfg = config.load_file(path)
    defaults = config.lan()
    for section in ("membership", "election", "tasks", "skills"):
        assert getattr(cfg, section) == getattr(defaults, section), section
    assert cfg.discovery.interfaces == ("eth0",)
