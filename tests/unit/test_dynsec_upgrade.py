"""The verdicts of the node-role upgrade run at each coordinator start (io/dynsec.upgrade_role)."""

from __future__ import annotations

from prsm_edge.io.dynsec import RoleUpgrade, node_role_acls, upgrade_role

SITE, GROUP = "lab", "g1"


def test_a_current_role_is_left_as_it_is_in_any_order() -> None:
    acls = list(reversed(node_role_acls(SITE, GROUP, "n1")))
    assert upgrade_role(SITE, GROUP, "prsm-node-n1", acls) == (RoleUpgrade.CURRENT, [])


def test_an_old_or_wider_role_of_this_group_gets_exactly_the_current_rules() -> None:
    current = node_role_acls(SITE, GROUP, "n1")
    old = current[:3]
    wide = [*current, {"acltype": "publishClientSend", "topic": "#", "priority": 5, "allow": True}]
    malformed = [*current, {"acltype": "publishClientSend"}]  # an entry we cannot read is not kept
    for acls in (old, wide, malformed):
        assert upgrade_role(SITE, GROUP, "prsm-node-n1", acls) == (RoleUpgrade.UPGRADED, current)


def test_roles_that_are_not_this_groups_node_roles_are_never_touched() -> None:
    other_group = [{"acltype": "publishClientSend", "topic": "prsm/v1/lab/g2/node/n1/state", "allow": True}]
    anywhere = [{"acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": True}]
    assert upgrade_role(SITE, GROUP, "prsm-node-n1", other_group)[0] is RoleUpgrade.OTHER
    assert upgrade_role(SITE, GROUP, "prsm-node-n1", anywhere)[0] is RoleUpgrade.OTHER
    assert upgrade_role(SITE, GROUP, "prsm-node-n1", [])[0] is RoleUpgrade.OTHER  # no rights stays none
    assert upgrade_role(SITE, GROUP, "prsm-node-n1", "junk")[0] is RoleUpgrade.OTHER
    assert (
        upgrade_role(SITE, GROUP, "prsm-node-N/1", node_role_acls(SITE, GROUP, "n1"))[0] is RoleUpgrade.OTHER
    )
    assert upgrade_role(SITE, GROUP, "prsm-viewer", node_role_acls(SITE, GROUP, "n1"))[0] is RoleUpgrade.OTHER
