"""Session and key ids are base64url, so one in 64 begins with ``-``: every command must take it."""

from __future__ import annotations

import argparse
import base64
import functools

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.ids import GENERATED_KID_RE, SID_RE
from ledger.service.keys import generate, key_id
from session_ledger.cli import _options, build_parser, protect_dashed_ids


def _sid(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


dashed_sids = st.builds(
    lambda raw, lead: lead + _sid(raw)[len(lead) :],
    st.binary(min_size=16, max_size=16),
    st.sampled_from(["-", "--", "-_"]),
)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once: building the whole command tree costs ~25 ms, parsing does not change it."""
    return build_parser()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    return parser.parse_args(protect_dashed_ids(parser, argv))


@given(sid=dashed_sids, other=dashed_sids)
def test_every_command_taking_a_sid_parses_one_that_begins_with_a_dash(sid: str, other: str) -> None:
    assert SID_RE.fullmatch(sid) and SID_RE.fullmatch(other)
    url = ["--nats-url", "nats://127.0.0.1:4222"]
    assert _parse(["sessions", "show", sid, "--json", *url]).sid == sid
    assert _parse(["sessions", "show", "--json", sid]).sid == sid
    args = _parse(["session", "revoke", sid, "--reason", "logout"])
    assert (args.sid, args.reason) == (sid, "logout")
    args = _parse(["session", "revoke-own", sid, "--sub", "bob", "--current", other, *url])
    assert (args.sid, args.current, args.sub) == (sid, other, "bob")
    args = _parse(["session", "sign-out-others", "--sub", "bob", "--current", other])
    assert args.current == other
    args = _parse(["session", "step-up", sid, "--sub", "bob", "--acr", "aal2", "--amr", "otp"])
    assert args.sid == sid


@given(raw=st.binary(min_size=12, max_size=12))
def test_keys_retire_parses_a_key_id_that_begins_with_a_dash(raw: bytes) -> None:
    """Key ids are 96 bits of base64url (``key_id``): one in 64 begins with ``-`` too."""
    kid = "-" + _sid(raw)[1:]
    assert GENERATED_KID_RE.fullmatch(kid)
    args = _parse(["keys", "retire", kid, "--now", "--nats-url", "nats://127.0.0.1:4222"])
    assert (args.kid, args.now) == (kid, True)


def test_the_service_names_its_keys_in_the_generated_kid_shape() -> None:
    for alg in ("ES256", "EdDSA", "RS256"):
        assert GENERATED_KID_RE.fullmatch(key_id(generate(alg).public_key()))


def test_a_users_own_double_dash_is_left_alone() -> None:
    argv = ["sessions", "show", "--json", "--", "-abcdefghijklmnopqrstu"]
    assert protect_dashed_ids(build_parser(), argv) == argv
    assert _parse(argv).sid == "-abcdefghijklmnopqrstu"


def test_an_option_shaped_like_a_sid_stays_an_option() -> None:
    """``--self-service-max-age`` is 22 characters of base64url: the option wins."""
    parser = build_parser()
    options = _options(parser)
    assert options["--current"] and options["--sub"] and not options["--json"]
    shaped = [o for o in options if SID_RE.fullmatch(o)]
    assert "--self-service-max-age" in shaped
    for option in shaped:
        assert protect_dashed_ids(parser, ["gateway", option, "10m"]) == ["gateway", option, "10m"]


def test_words_that_are_not_sids_still_reach_argparse_as_options() -> None:
    """An unknown option is still an error, not silently a positional value."""
    parser = build_parser()
    assert protect_dashed_ids(parser, ["sessions", "show", "--jsno", "abc"]) == [
        "sessions",
        "show",
        "--jsno",
        "abc",
    ]
