"""The merge rule for a gossiped record about another member, as a table.

A record about a member other than ourselves (in a SYNC, MEMBER_UPDATE or INTRO_ACK from a
live peer, or a record a peer we hold DEAD/LEFT sends about itself) is merged by
:class:`~meshd.membership.machine.Membership` in two steps: look up the :class:`Action` in
:data:`MERGE`, then carry it out. The key is

* the state we hold for the member (:class:`~meshd.membership.table.PeerState`; ``UNKNOWN``
  when we hold nothing),
* the state the record carries (:class:`~meshd.wire.records.MemberState`),
* the record's incarnation compared with the one we hold (:class:`Order`; anything is
  ``NEWER`` than nothing, so the ``UNKNOWN`` rows are the same in every column).

The table is total (every key is present, :func:`merge_action` never fails on a well-typed
key) and follows the SWIM rules of :mod:`meshd.membership.machine`:

* The higher incarnation wins: an older record never changes anything.
* At equal incarnation DEAD/LEFT beat ALIVE/SUSPECT, and LEFT beats DEAD (the more precise
  verdict); DEAD replaces LEFT only at a newer incarnation (that one crashed).
* SUSPECT gossip about others never makes us suspect anyone (only the suspect reacts to
  it): about a live member it carries at most newer info. Only a newer ALIVE record clears
  our suspicion (the suspect refuted). An equal-incarnation ALIVE/SUSPECT record says
  nothing new about a live member.
* A DEAD/LEFT member is never revived by a record at its old incarnation, only by a newer
  one (it restarted or refuted). Old-incarnation messages from the member itself get a
  "you are dead" notice instead; that is the machine's business, not this table's.
* A live member's record vouches for an unknown member or a candidate at once (ALIVE and
  SUSPECT alike), and a DEAD/LEFT record lists it as such; a candidate takes any record
  at an incarnation no older than the one we hold for it.

Two side conditions are not a function of the key and stay guards in the machine's
actions: info whose admission proof fails verification is ignored (every action but
``IGNORE``), and the dead guard (``GUARDED_DEAD`` only): a DEAD verdict about a member we
heard ourselves within ``dead_guard`` (stretched in big meshes like the other silence
thresholds) is answered with a notice to that member instead of applied.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from meshd.errors import LocalProtocolError
from meshd.membership.table import PeerState
from meshd.wire.records import MemberState


class Order(enum.Enum):
    """A record's incarnation compared with the one we hold for the same member."""

    OLDER = "older"
    EQUAL = "equal"
    NEWER = "newer"


def order_of(held: int | None, incoming: int) -> Order:
    """How ``incoming`` compares with ``held`` (None: we hold nothing, so it is newer)."""
    if held is None or incoming > held:
        return Order.NEWER
    return Order.EQUAL if incoming == held else Order.OLDER


class Action(enum.Enum):
    """What the machine does with a record (see ``Membership._merge_one``)."""

    #: The record does not beat what we hold: nothing happens.
    IGNORE = "ignore"
    #: Unknown member, ALIVE/SUSPECT record: listed ALIVE at once (a live member vouches
    #: for it) and linked to; the joined member is not gossiped on (no cascades).
    ADD_ALIVE = "add_alive"
    #: Unknown member, DEAD/LEFT record: listed in that state, not linked, not retried.
    ADD_DOWN = "add_down"
    #: Candidate, ALIVE/SUSPECT record: takes the record's info and is listed ALIVE.
    VOUCHED = "vouched"
    #: Live member, newer ALIVE/SUSPECT record that does not clear a suspicion: takes the
    #: newer info, state unchanged ("updated" if more than the incarnation changed).
    UPDATE_INFO = "update_info"
    #: SUSPECT member, newer ALIVE record (it refuted): takes the info, listed ALIVE again.
    REFUTED = "refuted"
    #: Candidate or member, DEAD/LEFT record that wins: takes the info and the record's
    #: state, links closed, no reconnect attempts.
    GOSSIP_DOWN = "gossip_down"
    #: Live member, DEAD record at its incarnation or newer: subject to the dead guard;
    #: otherwise as GOSSIP_DOWN, plus reconnect attempts (it was live to us).
    GUARDED_DEAD = "guarded_dead"
    #: DEAD/LEFT member, newer ALIVE/SUSPECT record: takes the info, listed ALIVE, linked.
    RESTARTED = "restarted"
    #: DEAD/LEFT member, newer record in the same state: takes the newer info, quietly.
    NEWER_DOWN_INFO = "newer_down_info"


_U, _C, _A, _S, _D, _L = (
    PeerState.UNKNOWN,
    PeerState.CANDIDATE,
    PeerState.ALIVE,
    PeerState.SUSPECT,
    PeerState.DEAD,
    PeerState.LEFT,
)
_ALIVE, _SUSPECT, _DEAD, _LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_IGNORE = Action.IGNORE
_ADD_ALIVE = Action.ADD_ALIVE
_ADD_DOWN = Action.ADD_DOWN
_VOUCHED = Action.VOUCHED
_UPDATE_INFO = Action.UPDATE_INFO
_REFUTED = Action.REFUTED
_GOSSIP_DOWN = Action.GOSSIP_DOWN
_GUARDED_DEAD = Action.GUARDED_DEAD
_RESTARTED = Action.RESTARTED
_NEWER_DOWN_INFO = Action.NEWER_DOWN_INFO

# fmt: off
#: (state we hold, record's state) -> the actions for an older, equal, newer record.
_ROWS: Final[dict[tuple[PeerState, MemberState], tuple[Action, Action, Action]]] = {
    # we hold, record  older             equal             newer
    (_U, _ALIVE):   (_ADD_ALIVE,       _ADD_ALIVE,       _ADD_ALIVE),
    (_U, _SUSPECT): (_ADD_ALIVE,       _ADD_ALIVE,       _ADD_ALIVE),
    (_U, _DEAD):    (_ADD_DOWN,        _ADD_DOWN,        _ADD_DOWN),
    (_U, _LEFT):    (_ADD_DOWN,        _ADD_DOWN,        _ADD_DOWN),
    # A candidate takes any record at least as new as its announcement.
    (_C, _ALIVE):   (_IGNORE,          _VOUCHED,         _VOUCHED),
    (_C, _SUSPECT): (_IGNORE,          _VOUCHED,         _VOUCHED),
    (_C, _DEAD):    (_IGNORE,          _GOSSIP_DOWN,     _GOSSIP_DOWN),
    (_C, _LEFT):    (_IGNORE,          _GOSSIP_DOWN,     _GOSSIP_DOWN),
    # Live: a newer live record carries newer info, and a newer ALIVE clears our suspicion
    # (it refuted); SUSPECT gossip never makes us suspect. DEAD/LEFT beat it from the same
    # incarnation on.
    (_A, _ALIVE):   (_IGNORE,          _IGNORE,          _UPDATE_INFO),
    (_A, _SUSPECT): (_IGNORE,          _IGNORE,          _UPDATE_INFO),
    (_A, _DEAD):    (_IGNORE,          _GUARDED_DEAD,    _GUARDED_DEAD),
    (_A, _LEFT):    (_IGNORE,          _GOSSIP_DOWN,     _GOSSIP_DOWN),
    (_S, _ALIVE):   (_IGNORE,          _IGNORE,          _REFUTED),
    (_S, _SUSPECT): (_IGNORE,          _IGNORE,          _UPDATE_INFO),
    (_S, _DEAD):    (_IGNORE,          _GUARDED_DEAD,    _GUARDED_DEAD),
    (_S, _LEFT):    (_IGNORE,          _GOSSIP_DOWN,     _GOSSIP_DOWN),
    # Down: only a newer incarnation revives; LEFT beats DEAD at equal incarnation, DEAD
    # replaces LEFT only at a newer one.
    (_D, _ALIVE):   (_IGNORE,          _IGNORE,          _RESTARTED),
    (_D, _SUSPECT): (_IGNORE,          _IGNORE,          _RESTARTED),
    (_D, _DEAD):    (_IGNORE,          _IGNORE,          _NEWER_DOWN_INFO),
    (_D, _LEFT):    (_IGNORE,          _GOSSIP_DOWN,     _GOSSIP_DOWN),
    (_L, _ALIVE):   (_IGNORE,          _IGNORE,          _RESTARTED),
    (_L, _SUSPECT): (_IGNORE,          _IGNORE,          _RESTARTED),
    (_L, _DEAD):    (_IGNORE,          _IGNORE,          _GOSSIP_DOWN),
    (_L, _LEFT):    (_IGNORE,          _IGNORE,          _NEWER_DOWN_INFO),
}
# fmt: on

#: Every ``(state we hold, record's state, incarnation order) -> action``; total.
MERGE: Final[Mapping[tuple[PeerState, MemberState, Order], Action]] = MappingProxyType(
    {
        (held, incoming, order): action
        for (held, incoming), actions in _ROWS.items()
        for order, action in zip(Order, actions, strict=True)
    }
)


def merge_action(held: PeerState, incoming: MemberState, order: Order) -> Action:
    """The action for a record in state ``incoming`` about a member we hold in ``held``,
    ``order`` being its incarnation against ours. Raises LocalProtocolError for a key
    outside the table (only possible with ill-typed arguments: the table is total)."""
    try:
        return MERGE[(held, incoming, order)]
    except KeyError:
        raise LocalProtocolError(f"no merge rule for {held}, {incoming}, {order}") from None
