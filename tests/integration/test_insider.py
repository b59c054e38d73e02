"""A compromised member (it holds the mesh key and its own node key) against three real
daemons: each attack of the trust issue is refused and counted, and the mesh is healthy
afterwards (the same lead in the same term, every member alive, a delegated task done).

The insider is a priority-0 :class:`~meshd.daemon.node.Node` run in this test's process
(see ``test_skill_packs_insider.py`` for the pattern), so it can send crafted frames; the
daemons are real ``meshd`` processes on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import pytest
from harness import Daemon, Mesh
from test_skill_packs_insider import insider, rejected, start_daemons, until

from meshd.identity import Identity
from meshd.wire.messages import (
    CertVote,
    LeadAck,
    LeadCert,
    LeadHeartbeat,
    MemberUpdate,
    StepDown,
    TaskUpdate,
    VoteReq,
)
from meshd.wire.records import MemberInfo, MemberRecord, MemberState, TaskState
from meshd.wire.schema import MAX_COUNTER

pytestmark = pytest.mark.integration


def lead_of(d: Daemon) -> tuple[str | None, int]:
    st = d.status()
    lead = st["lead"]
    return (lead["id"] if lead else None), st["term"]


def agreed(daemons: list[Daemon]) -> tuple[str, int] | None:
    seen = {lead_of(d) for d in daemons}
    if len(seen) == 1:
        lead, term = seen.pop()
        if lead is not None:
            return lead, term
    return None


def refused_total(d: Daemon, *reasons: str) -> int:
    got = rejected(d)
    return sum(got.get(r, 0) for r in reasons)


def incarnation(d: Daemon) -> int:
    me: dict[str, Any] = d.status()["self"]
    return int(me["incarnation"])


async def test_an_insider_cannot_lead_wedge_terms_rewrite_tasks_or_speak_for_others(
    mesh: Mesh,
) -> None:
    daemons = await start_daemons(
        mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")]
    )
    # The team-lead (highest priority) leads once the mesh has settled (a takeover
    # otherwise changes the term on its own during the test).
    top = daemons[0].node_id
    before = await until(
        lambda: (got := agreed(daemons)) is not None and got[0] == top and got,
        "the team-lead to lead",
    )
    lead_id, term = before
    lead = next(d for d in daemons if d.node_id == lead_id)
    follower = next(d for d in daemons if d.node_id != lead_id)
    ids = [d.node_id for d in daemons]

    async with insider(mesh, daemons[0], daemons) as mallory:
        me = mallory.identity.node_id

        # 1. Terms: a LEAD_ACK, a vote request and a forged certificate naming huge terms.
        mallory.send(lead.node_id, LeadAck(MAX_COUNTER, 1, False))
        for d in ids:
            mallory.send(d, VoteReq(term + 1000, False, 100))
            mallory.send(d, VoteReq(MAX_COUNTER, True, 100))
        # 2. Leadership without votes: heartbeats of a newer term, a certificate holding
        #    only the insider's own vote, and one with a forged vote of a real member.
        own = mallory.identity.sign(b"not a vote")
        for d in ids:
            mallory.send(d, LeadHeartbeat(term + 1, me, 1))
            mallory.send(d, LeadCert(term + 1, me, (CertVote(me, own),)))
            mallory.send(d, LeadCert(term + 1, me, tuple(CertVote(x, own) for x in [me, *ids])))
        mallory.publish(LeadHeartbeat(term + 1, me, 2))
        # 3. A step-down in the lead's name (the envelope sender is the insider).
        mallory.publish(StepDown(term, me, "transfer"))
        # 4. Speaking for others: "the lead left" with the lead's own info, and "b is
        #    suspect" at the largest incarnation the wire carries.
        lead_info = mallory.core.membership.get(lead.node_id)
        f_info = mallory.core.membership.get(follower.node_id)
        assert lead_info is not None and f_info is not None
        left = MemberRecord(lead_info.info, MemberState.LEFT)
        suspect = MemberRecord(
            dataclasses.replace(f_info.info, incarnation=MAX_COUNTER), MemberState.SUSPECT
        )
        for d in ids:
            mallory.send(d, MemberUpdate((left,)))
        mallory.send(follower.node_id, MemberUpdate((suspect,)))
        mallory.publish(MemberUpdate((left, suspect)))

        # Every kind is refused and counted.
        await until(
            lambda: refused_total(follower, "lead_unproven", "bad_certificate") >= 2,
            "the follower to refuse the unproven lead",
        )
        # The suspicion about b claims an incarnation far above b's own: b refutes at its
        # own + 1. The lead's info relayed with priority 0 and other ports, re-signed by
        # the insider, is not the lead's: refused.
        await until(
            lambda: refused_total(follower, "incarnation_jump") >= 1,
            "the follower to refuse the incarnation jump about itself",
        )
        forged_info = mallory.identity.sign_info(
            dataclasses.replace(lead_info.info, priority=0, router_port=1, incarnation=7)
        )
        mallory.send(
            follower.node_id, MemberUpdate((MemberRecord(forged_info, MemberState.ALIVE),))
        )
        await until(
            lambda: refused_total(follower, "bad_member_info") >= 1,
            "the follower to refuse the lead's info signed by the insider",
        )
        await until(
            lambda: refused_total(follower, "step_down_not_lead") >= 1,
            "the follower to refuse the forged step-down",
        )

        # 5. Rewriting a task: a copy of a running task, marked complete by the insider
        #    at the lead's term with seq + 1000, sent to every node.
        with follower.client() as cl:
            handle = cl.delegate("sleep", {"seconds": 2.0, "step": 0.1}, role="network-admin")
        task_id = handle.task_id

        def running_copy() -> Any:
            tasks = mallory.core.tasks
            copy = tasks.copies.get(task_id) if tasks is not None else None
            if copy is not None and copy.task.state is TaskState.RUNNING:
                return copy
            return None

        copy = await until(running_copy, "the insider to see the task running")
        forged_task = dataclasses.replace(
            copy.task, state=TaskState.COMPLETE, result={"slept": "forged"}
        )
        forged = dataclasses.replace(copy, seq=copy.seq + 1000, task=forged_task)
        for d in ids:
            mallory.send(d, TaskUpdate(forged.seq, (forged,)))
        far = dataclasses.replace(copy, term=MAX_COUNTER, seq=MAX_COUNTER, task=forged_task)
        mallory.publish(TaskUpdate(MAX_COUNTER, (far,)))
        await until(
            lambda: refused_total(follower, "task_update_not_lead") >= 1,
            "the follower to refuse the forged task update",
        )
        view = await asyncio.to_thread(handle.wait, 60.0)
        assert view["state"] == "complete"
        assert view["result"] != {"slept": "forged"}

        # The mesh is whole: the same lead in the same term everywhere, every member
        # alive (the insider too: nobody was declared gone), and b's incarnation small.
        assert await until(lambda: agreed(daemons), "one lead") == before
        for d in daemons:
            states = d.peer_states()
            assert all(states.get(x) == "alive" for x in ids if x != d.node_id), states
        assert incarnation(follower) < 1000
        with lead.client() as cl:
            done = cl.delegate("echo", {"message": "still here"}).result(60.0)
        assert done == {"message": "still here"} or "still here" in str(done)
        for d in daemons:
            assert d.proc is not None and d.proc.poll() is None


def open_fds(d: Daemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


async def test_fake_members_take_neither_quorum_nor_file_descriptors(mesh: Mesh) -> None:
    # 300 members with valid admission proofs and signed info that nobody can reach (the
    # insider made their keys): gossip only, so they never become voters, and the links
    # a node opens to members never heard from are bounded.
    daemons = await start_daemons(
        mesh, [("a", "team-lead"), ("b", "network-admin"), ("c", "network-admin")]
    )
    top = daemons[0].node_id
    async with insider(mesh, daemons[0], daemons) as mallory:
        await until(
            lambda: all(d.status()["voters"]["version"] >= 1 for d in daemons),
            "the lead to decide the voter set",
        )
        before = await until(
            lambda: (got := agreed(daemons)) is not None and got[0] == top and got,
            "the team-lead to lead",
        )
        voters = {d.name: d.status()["voters"]["count"] for d in daemons}
        fds = {d.name: open_fds(d) for d in daemons}
        fakes = []
        for i in range(300):
            ident = Identity.generate()
            info = MemberInfo(
                node_id=ident.node_id,
                name=f"fake{i}",
                role="team-lead",
                priority=100,
                ed25519_pk=ident.ed25519_pk,
                curve_pk=ident.curve_pk,
                proof=mallory.mesh.proof_for(ident.ed25519_pk),
                addresses=("127.0.0.1",),
                router_port=9,
                pub_port=9,
                intro_port=9,
            )
            fakes.append(MemberRecord(ident.sign_info(info), MemberState.ALIVE))
        for d in daemons:
            for i in range(0, 300, 100):
                mallory.send(d.node_id, MemberUpdate(tuple(fakes[i : i + 100])))
        await until(
            lambda: all(len(d.peer_states()) >= 300 for d in daemons),
            "the daemons to list the fake members",
        )
        # Long enough for the fakes to be suspected and declared dead.
        await asyncio.sleep(0)  # let the insider's loop run between polls
        await until(
            lambda: all(
                sum(1 for s in d.peer_states().values() if s == "dead") >= 300 for d in daemons
            ),
            "the fake members to be declared dead",
            timeout=120,
        )
        after = await until(lambda: agreed(daemons), "one lead")
        assert after == before
        for d in daemons:
            st = d.status()["voters"]
            assert st["count"] == voters[d.name], st
            assert open_fds(d) < fds[d.name] + 80, (d.name, fds[d.name], open_fds(d))
        with daemons[1].client() as cl:
            done = cl.delegate("echo", {"message": "quorum kept"}).result(60.0)
        assert "quorum kept" in str(done)
