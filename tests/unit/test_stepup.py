"""RFC 9470 step-up check and challenge (``ledger.domain.stepup``): pure, no I/O."""

from __future__ import annotations

import argparse

import pytest

from consumers.gateway.settings import GatewaySettings
from ledger.domain.errors import ConfigError
from ledger.domain.stepup import NONE, BadRequirement, Requirement, parse_requirement, shortfall
from session_ledger.cli import gateway as gateway_cli


def test_parse_requirement_reads_header_text_and_refuses_what_would_break_the_challenge() -> None:
    assert parse_requirement(None, None) == NONE and NONE.empty
    assert parse_requirement("  aal2   aal3 ", " 300 ") == Requirement(("aal2", "aal3"), 300)
    assert parse_requirement("", "") == NONE
    for acr, age in (('aal2"', None), ("a\\b", None), (" ".join("a" * 9), None), (None, "-1"),
                     (None, "1e3"), (None, "٣"), (None, str(10**12)), ("é", None)):  # fmt: skip
        with pytest.raises(BadRequirement):
            parse_requirement(acr, age)


def test_shortfall_names_the_levels_and_the_max_age() -> None:
    need = Requirement(("aal2", "aal3"), None)
    assert shortfall(need, acr="aal3", auth_time=None, now=1000) is None
    assert shortfall(NONE, acr=None, auth_time=None, now=1000) is None
    short = shortfall(need, acr="aal1", auth_time=900, now=1000, realm="api")
    assert short is not None and short.reason == "acr"
    assert short.challenge == (
        'Bearer realm="api", error="insufficient_user_authentication", '
        'error_description="A different authentication level is required", acr_values="aal2 aal3"'
    )
    aged = Requirement((), 60)
    assert shortfall(aged, acr=None, auth_time=950, now=1000) is None
    for auth_time in (900, None):  # too old, or unknown
        short = shortfall(aged, acr="aal1", auth_time=auth_time, now=1000)
        assert short is not None and short.reason == "max_age"
        assert short.challenge == (
            'Bearer error="insufficient_user_authentication", '
            'error_description="More recent authentication is required", max_age="60"'
        )
    both = shortfall(Requirement(("aal2",), 60), acr=None, auth_time=None, now=1000)
    assert (
        both is not None
        and both.reason == "acr"
        and both.challenge.endswith('acr_values="aal2", max_age="60"')
    )


def test_the_gateway_setting_is_checked_at_start_up() -> None:
    assert GatewaySettings().self_service_requirement().empty  # default: no requirement
    config = GatewaySettings(self_service_acr=("aal2",), self_service_max_age="10m")
    assert config.self_service_requirement() == Requirement(("aal2",), 600)
    with pytest.raises(ConfigError):
        GatewaySettings(self_service_acr=('aal2"',))


def test_the_gateway_command_takes_the_level_as_options() -> None:
    parser = argparse.ArgumentParser()
    gateway_cli.register(parser.add_subparsers())
    options = ["--self-service-acr", "aal2", "--self-service-acr", "aal3", "--self-service-max-age", "10m"]
    args = parser.parse_args(["gateway", *options])
    assert gateway_cli.gateway_config(args).self_service_requirement() == Requirement(("aal2", "aal3"), 600)
    assert gateway_cli.gateway_config(parser.parse_args(["gateway"])).self_service_requirement().empty
