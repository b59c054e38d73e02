"""The task lifecycle table: every legal pair, every illegal one, apply() and the model checks."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from meshd.config import Config, TaskConfig, load_file
from meshd.errors import LocalProtocolError, MeshError
from meshd.tasks.model import TaskError, new_task, new_task_id, validate_task
from meshd.tasks.table import SILENT_EVENTS, TRANSITIONS, Event, apply, transition
from meshd.wire.records import Requirement, TaskState, is_terminal, succeeded

S = TaskState
E = Event

# Written out independently of the implementation (double entry): a change to the
# lifecycle must be made in both places, on purpose.
EXPECTED: dict[tuple[TaskState, Event], TaskState] = {
    (S.PENDING, E.ASSIGN): S.ASSIGNED,
    (S.PENDING, E.CANCEL): S.CANCELLED,
    (S.PENDING, E.DEPENDENCY_FAILED): S.FAILED,
    (S.PENDING, E.DEADLINE): S.FAILED,
    (S.ASSIGNED, E.ACCEPT): S.ASSIGNED,
    (S.ASSIGNED, E.START): S.RUNNING,
    (S.ASSIGNED, E.REJECT): S.REJECTED,
    (S.ASSIGNED, E.FAIL): S.FAILED,
    (S.ASSIGNED, E.TIMEOUT): S.RETRY,
    (S.ASSIGNED, E.AGENT_LOST): S.PENDING,
    (S.ASSIGNED, E.REQUEUE): S.PENDING,
    (S.ASSIGNED, E.CANCEL): S.CANCELLED,
    (S.ASSIGNED, E.DEADLINE): S.FAILED,
    (S.RUNNING, E.PROGRESS): S.RUNNING,
    (S.RUNNING, E.CHECKPOINT): S.RUNNING,
    (S.RUNNING, E.COMPLETE): S.COMPLETE,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.TIMEOUT): S.RETRY,
    (S.RUNNING, E.AGENT_LOST): S.PENDING,
    (S.RUNNING, E.REQUEUE): S.PENDING,
    (S.RUNNING, E.HANDOFF): S.ASSIGNED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.DEADLINE): S.FAILED,
    (S.REJECTED, E.ASSIGN): S.ASSIGNED,
    (S.REJECTED, E.REQUEUE): S.PENDING,
    (S.REJECTED, E.FAIL): S.FAILED,
    (S.REJECTED, E.CANCEL): S.CANCELLED,
    (S.REJECTED, E.DEADLINE): S.FAILED,
    (S.COMPLETE, E.VERIFY_OK): S.VERIFIED,
    (S.COMPLETE, E.VERIFY_FAIL): S.FAILED,
    (S.RETRY, E.RETRY): S.PENDING,
    (S.RETRY, E.CANCEL): S.CANCELLED,
    (S.RETRY, E.DEADLINE): S.FAILED,
    (S.FAILED, E.OPERATOR_RETRY): S.RETRY,
    (S.PENDING, E.NEED_APPROVAL): S.WAITING_APPROVAL,
    (S.WAITING_APPROVAL, E.APPROVE): S.PENDING,
    (S.WAITING_APPROVAL, E.DENY): S.FAILED,
    (S.WAITING_APPROVAL, E.CANCEL): S.CANCELLED,
    (S.WAITING_APPROVAL, E.DEADLINE): S.FAILED,
    (S.WAITING_APPROVAL, E.DEPENDENCY_FAILED): S.FAILED,
}

ALL_PAIRS = list(itertools.product(TaskState, Event))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]
NOW = 1_700_000_000.0


def _task(state: TaskState = S.PENDING, verify: bool = False):  # type: ignore[no-untyped-def]
    t = new_task("echo", {"x": 1}, "origin", NOW, verify=verify)
    return replace(t, state=state)


def test_table_is_exactly_the_expected_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(S.PENDING, E.START)] = S.RUNNING  # type: ignore[index]


@pytest.mark.parametrize(("state", "event"), list(EXPECTED))
def test_every_legal_pair(state: TaskState, event: Event) -> None:
    assert transition(state, event) is EXPECTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_every_illegal_pair_raises(state: TaskState, event: Event) -> None:
    with pytest.raises(LocalProtocolError, match="illegal task transition"):
        transition(state, event)


@pytest.mark.parametrize(("state", "event"), list(EXPECTED))
def test_apply_follows_the_table_and_records_history(state: TaskState, event: Event) -> None:
    # verify=True keeps COMPLETE non-terminal, so its VERIFY_* pairs apply.
    task = _task(state, verify=True)
    after = apply(task, event, NOW + 5, "lead-1", "why", assigned_to="n2")
    assert after.state is EXPECTED[(state, event)]
    assert after.updated_at == NOW + 5
    assert after.assigned_to == "n2"
    if event in SILENT_EVENTS:
        assert after.history == task.history
    else:
        assert after.history[:-1] == task.history
        last = after.history[-1]
        assert (last.state, last.at, last.actor, last.reason) == (
            after.state,
            NOW + 5,
            "lead-1",
            "why",
        )


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_apply_refuses_every_illegal_pair(state: TaskState, event: Event) -> None:
    with pytest.raises(LocalProtocolError):
        apply(_task(state, verify=True), event, NOW, "lead")


def test_terminal_states() -> None:
    # Nothing leaves VERIFIED or CANCELLED; FAILED only by an operator retry.
    for state in (S.VERIFIED, S.CANCELLED):
        assert not [e for (s, e) in EXPECTED if s is state]
    assert [e for (s, e) in EXPECTED if s is S.FAILED] == [E.OPERATOR_RETRY]
    assert is_terminal(_task(S.COMPLETE)) and succeeded(_task(S.COMPLETE))
    assert not is_terminal(_task(S.COMPLETE, verify=True))
    assert not succeeded(_task(S.COMPLETE, verify=True))
    assert succeeded(_task(S.VERIFIED, verify=True))
    for state in (S.PENDING, S.ASSIGNED, S.RUNNING, S.REJECTED, S.RETRY):
        assert not is_terminal(_task(state))


def test_complete_without_verify_refuses_verify_events() -> None:
    with pytest.raises(LocalProtocolError, match="finished"):
        apply(_task(S.COMPLETE), E.VERIFY_OK, NOW, "lead")


def test_operator_retry_is_the_only_way_out_of_failed() -> None:
    t = apply(_task(S.FAILED), E.OPERATOR_RETRY, NOW, "operator")
    assert t.state is S.RETRY
    for event in Event:
        if event is not E.OPERATOR_RETRY:
            with pytest.raises(LocalProtocolError):
                apply(_task(S.FAILED), event, NOW, "lead")


def test_apply_cannot_forge_state_or_history() -> None:
    with pytest.raises(LocalProtocolError, match="cannot change"):
        apply(_task(), E.ASSIGN, NOW, "lead", state=S.RUNNING)


def test_states_and_events_are_stable_strings() -> None:
    assert [s.value for s in TaskState] == [
        "pending", "assigned", "running", "complete", "verified",
        "rejected", "failed", "retry", "cancelled", "waiting_approval",
    ]  # fmt: skip
    assert all(isinstance(e.value, str) for e in Event)


# --- the model's checks on a new task -------------------------------------------------


def test_new_task_defaults_from_config() -> None:
    cfg = TaskConfig(default_timeout=12.0, retry_limit=7)
    t = new_task("echo", {}, "o", NOW, config=cfg)
    assert (t.timeout_s, t.retry_limit, t.state, t.created_at) == (12.0, 7, S.PENDING, NOW)
    assert len(t.task_id) == 32 and t.history[0].state is S.PENDING
    assert len(new_task_id()) == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skill": ""}, "empty skill"),
        ({"skill": "  "}, "empty skill"),
        ({"priority": 10}, "bad priority"),
        ({"priority": -1}, "bad priority"),
        ({"timeout_s": -1.0}, "bad timeout"),
        ({"timeout_s": 0.0}, "bad timeout"),
        ({"task_id": "a" * 32, "depends_on": ("a" * 32,)}, "depend on itself"),
        ({"depends_on": tuple(f"{i:032x}" for i in range(65))}, "too many dependencies"),
        ({"depends_on": ("b" * 32, "b" * 32)}, "listed twice"),
        ({"depends_on": ("nothex",)}, "bad dependency id"),
        ({"task_id": "XYZ"}, "bad task id"),
        ({"params": {"blob": b"x" * (64 * 1024)}}, "params too large"),
        ({"params": {"f": object()}}, "cannot be encoded"),
        ({"retry_limit": -1}, "bad retry limit"),
        ({"requirement": Requirement(role="")}, "empty role"),
    ],
)
def test_bad_new_tasks_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"skill": "echo", "params": {}, "origin": "o", "now": NOW}
    args.update(kwargs)
    with pytest.raises(TaskError, match=message) as info:
        new_task(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, MeshError)


def test_validate_accepts_a_good_task() -> None:
    validate_task(new_task("echo", {"a": [1, 2]}, "o", NOW, depends_on=("c" * 32,)))


def test_config_has_tasks_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = Config()
    assert cfg.tasks.retry_backoff_base == 0.5 and cfg.tasks.retry_backoff_max == 30.0
    assert cfg.tasks.max_params_bytes == 64 * 1024
    path = tmp_path / "m.toml"
    path.write_text("[tasks]\nretry_limit = 5\nretry_backoff_base = 1\n")
    loaded = load_file(path)
    assert loaded.tasks.retry_limit == 5 and loaded.tasks.retry_backoff_base == 1.0


def test_package_exports_the_public_api() -> None:
    import meshd.tasks as tasks

    for name in tasks.__all__:
        assert getattr(tasks, name) is not None
