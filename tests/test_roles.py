"""The one list of roles (core.roles): the HTTP API, its tokens and the OPC UA
server's users rank them the same way."""

from __future__ import annotations

from typing import get_args

import pytest

from balans_edge.core.roles import ROLES, Role, allows


def test_roles_rank_each_above_the_ones_before():
    assert ROLES == get_args(Role) == ("viewer", "operator", "admin")
    for i, have in enumerate(ROLES):
        assert [allows(have, need) for need in ROLES] == [j <= i for j in range(len(ROLES))]


def test_an_unknown_role_is_a_key_error_not_a_grant():
    with pytest.raises(KeyError):
        allows("root", "viewer")
