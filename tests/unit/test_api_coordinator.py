"""The coordinator's API in memory: reads, relays of owner changes, timeouts; and the OpenAPI documents."""

from __future__ import annotations

from nacl.signing import SigningKey
from openapi_spec_validator import validate

from prsm_edge.coordinator.api import CoordinatorApi, Forward, Relay, Respond
from prsm_edge.io.http_api import openapi_document
from prsm_edge.protocol.api import METHODS, Access, seal_request
from prsm_edge.protocol.envelope import Signer, open_envelope
from prsm_edge.protocol.group import Group, GroupConfig, Member
from prsm_edge.protocol.ledger import Ledger
from prsm_edge.protocol.messages import ApiRequest, ApiResponse, ResourceSpec, ResourceType
from prsm_edge.protocol.verifier import Verifier, VerifierConfig

NOW = 1_700_000_000_000


def _api() -> tuple[CoordinatorApi, Member]:
    coord = Signer(SigningKey(b"c" * 32))
    group = Group(
        GroupConfig(site="lab", group="g1", coordinator=coord.node_id, public_key=coord.public_key, epoch=1)
    )
    node = Signer(SigningKey(b"n" * 32))
    member = Member(
        node=node.node_id,
        public_key=node.public_key,
        bdseq=1,
        device_class="generic",
        hw_fingerprint="fp",
        resources=[ResourceSpec(type=ResourceType.COMPUTE_CPU, capacity=2.0, unit="cores")],
    )
    group.members[member.node] = member
    verifier = Verifier(
        VerifierConfig(site="lab", group="g1", coordinator=coord.node_id), Ledger(), secret=bytes(32)
    )
    ledger = Ledger()

    def trust(m: Member) -> dict[str, object]:
        level = group.level(m.node)
        return {"level": level.value, "trust": group.trust(m.node), "balance_micro": ledger.balance(m.node)}

    return CoordinatorApi(group, verifier, trust, max_pending=2), member


def _call(api: CoordinatorApi, client: Signer, method: str, **params: object) -> list[object]:
    envelope = seal_request(client, method, params, txid=f"tx-{method}", now_ms=NOW)
    request = open_envelope(envelope).message
    assert isinstance(request, ApiRequest)
    return list(api.call(client.node_id, request, envelope, NOW))


def test_reads_answer_from_the_roster_and_economy_reads_say_not_available() -> None:
    api, member = _api()
    viewer = Signer(SigningKey(b"v" * 32))
    [status] = _call(api, viewer, "status", node=member.node)
    assert isinstance(status, Respond) and status.response.ok
    assert status.response.result["level"] == "self_reported"
    assert status.response.result["resources"][0]["capacity"] == 2.0
    [summary] = _call(api, viewer, "network-summary")
    assert isinstance(summary, Respond) and summary.response.result["capacity"] == {"compute_cpu": 2.0}
    [relay] = _call(api, viewer, "optimize", node=member.node)  # advice needs the node's own record
    assert isinstance(relay, Relay) and relay.command.args["method"] == "optimize"
    for method in ("earnings", "analytics"):
        [answer] = _call(api, viewer, method, node=member.node)
        assert isinstance(answer, Respond)
        assert not answer.response.ok and answer.response.code == "not_available"
        assert answer.response.result == {}  # no figures are made up
    [unknown] = _call(api, viewer, "status", node="nobody")
    assert isinstance(unknown, Respond) and unknown.response.code == "unknown_node"


def test_an_owner_change_is_relayed_as_signed_and_only_its_answer_is_forwarded() -> None:
    api, member = _api()
    owner = Signer(SigningKey(b"o" * 32))
    envelope = seal_request(owner, "update", {"node": member.node, "settings": {}}, txid="tx1", now_ms=NOW)
    request = open_envelope(envelope).message
    assert isinstance(request, ApiRequest)
    [relay] = api.call(owner.node_id, request, envelope, NOW)
    assert isinstance(relay, Relay) and relay.node == member.node
    assert relay.command.verb == "owner" and relay.command.args["request"] == envelope
    wrong = ApiResponse(txid="other", method="update", ok=True)
    assert api.reply(member.node, wrong, b"x") == []
    right = ApiResponse(txid="tx1", method="update", ok=True)
    assert api.reply(member.node, right, b"signed-by-node") == [
        Forward(owner.node_id, "update", b"signed-by-node")
    ]
    assert api.reply(member.node, right, b"again") == []  # answered once


def test_a_relay_without_an_answer_times_out_and_the_table_is_bounded() -> None:
    api, member = _api()
    owner = Signer(SigningKey(b"o" * 32))
    for i in range(2):
        envelope = seal_request(owner, "pause", {"node": member.node}, txid=f"p{i}", now_ms=NOW)
        request = open_envelope(envelope).message
        assert isinstance(request, ApiRequest)
        assert isinstance(api.call(owner.node_id, request, envelope, NOW)[0], Relay)
    [busy] = _call(api, owner, "configure", node=member.node)
    assert isinstance(busy, Respond) and busy.response.code == "busy"
    expired = api.tick(NOW + 60_000)
    assert [e.response.code for e in expired if isinstance(e, Respond)] == ["timeout", "timeout"]
    assert len(api.pending) == 0


def test_an_offline_node_cannot_be_changed_and_a_node_cannot_relay_to_itself() -> None:
    api, member = _api()
    member.online = False
    owner = Signer(SigningKey(b"o" * 32))
    [answer] = _call(api, owner, "update", node=member.node, settings={})
    assert isinstance(answer, Respond) and answer.response.code == "not_available"
    member.online = True
    node = Signer(SigningKey(b"n" * 32))
    [answer] = _call(api, node, "update", node=member.node, settings={})
    assert isinstance(answer, Respond) and answer.response.code == "bad_request"
    [answer] = _call(api, node, "verify", node=member.node)  # the node asking for itself is answered here
    assert isinstance(answer, Respond) and answer.response.ok and answer.response.result["level"]


def test_the_openapi_documents_validate_and_list_every_route() -> None:
    agent = openapi_document("agent", writable=True)
    coordinator = openapi_document("coordinator", writable=False)
    validate(agent)
    validate(coordinator)
    for spec in METHODS.values():
        assert spec.http.lower() in agent["paths"][spec.path]
        if spec.access is Access.OWNER:
            assert spec.path not in coordinator["paths"]
        else:
            assert spec.http.lower() in coordinator["paths"][spec.path]
    settings = agent["components"]["schemas"]["ContributionSettings"]["properties"]
    assert settings["cpu_allocation_percentage"]["maximum"] == 1.0
