"""The NATS rights of each role (a pure rule) and the JWTs the auth callout signs."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import nkeys

from stocksync.domain.events import INBOUND_TYPES
from stocksync.messaging.nats_auth import (
    authorization_response,
    decode_jwt,
    new_seed,
    public_key,
    server_config,
    service_options,
    user_jwt,
)
from stocksync.settings import Settings
from stocksync.wire import nats_permissions

SERVICE_ONLY = ("stocksync.out.availability.a.x", "stocksync.dlq.a", "$KV.stocksync_availability.a.x")


def test_a_pos_key_publishes_sale_and_return_at_its_own_store_only() -> None:
    rights = nats_permissions("pos", ["store-a"], key_id="k1")
    inbound = [subject for subject in rights.publish if subject.startswith("stocksync.")]
    assert inbound == ["stocksync.in.store-a.return", "stocksync.in.store-a.sale"]
    assert "stocksync.out.outcome.store-a" in rights.subscribe
    assert "_INBOX_k1.>" in rights.subscribe
    assert not any("store-b" in subject for subject in rights.publish + rights.subscribe)


def test_only_admin_may_write_what_the_service_writes_or_manage_streams() -> None:
    for role, locations in (("pos", ["a"]), ("staff", ["a"]), ("ecommerce", [])):
        rights = nats_permissions(role, locations, key_id="k", pickup_locations=["a"])
        for subject in rights.publish:
            assert not subject.startswith(("stocksync.out", "stocksync.dlq", "$KV", ">")), (role, subject)
            assert not subject.startswith("$JS.API.STREAM.") or ".INFO." in subject or ".MSG.GET." in subject
    assert nats_permissions("admin", [], key_id="k").publish == (">",)


def test_staff_publishes_every_type_and_ecommerce_reservations_at_pickup_stores() -> None:
    staff = nats_permissions("staff", ["a", "b"], key_id="k")
    assert {f"stocksync.in.{loc}.{kind}" for loc in "ab" for kind in INBOUND_TYPES} <= set(staff.publish)
    shop = nats_permissions("ecommerce", [], key_id="k", pickup_locations=["p1"])
    inbound = {subject for subject in shop.publish if subject.startswith("stocksync.in.")}
    orders = {f"stocksync.in._order.*.{action}" for action in ("place", "ship", "cancel")}
    assert inbound == {f"stocksync.in.p1.{kind}" for kind in ("reserve", "collect", "cancel")} | orders
    assert {"stocksync.out.availability.>", "stocksync.out.reservation.>"} <= set(shop.subscribe)
    assert {"stocksync.out.channel.>", "stocksync.out.order.>"} <= set(shop.subscribe)


def test_no_till_or_store_key_may_place_online_orders() -> None:
    for role in ("pos", "staff"):
        rights = nats_permissions(role, ["a"], key_id="k")
        assert not any(
            "_order" in subject or ".order." in subject for subject in rights.publish + rights.subscribe
        )


def test_the_callout_jwts_are_signed_by_the_issuer_and_expire() -> None:
    issuer = new_seed("account")
    rights = nats_permissions("pos", ["a"], key_id="k1")
    token = user_jwt(
        user_nkey="UX", name="k1", account="ACC", permissions=rights, ttl_s=60, issuer_seed=issuer
    )
    claims = decode_jwt(token)
    assert claims["iss"] == public_key(issuer) and claims["aud"] == "ACC" and claims["sub"] == "UX"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["nats"]["pub"]["allow"] == list(rights.publish)
    signed, _, signature = token.rpartition(".")
    verifier = nkeys.from_seed(bytearray(issuer.encode()))
    assert verifier.verify(signed.encode(), base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    answer = authorization_response(user_nkey="UX", server_id="NS", issuer_seed=issuer, error="no")
    refusal = decode_jwt(answer)
    assert refusal["aud"] == "NS" and refusal["nats"]["error"] == "no" and "jwt" not in refusal["nats"]


def test_the_server_config_names_the_issuer_and_the_service_user() -> None:
    service, issuer = new_seed("user"), new_seed("account")
    config = server_config(Settings(nats_nkey_seed=service, nats_auth_issuer_seed=issuer))
    assert f"issuer: {public_key(issuer)}" in config
    assert f"auth_users: [ {public_key(service)} ]" in config
    assert "auth_callout" not in server_config(Settings())  # no secrets configured: an open server


def test_postgres_tls_is_set_in_the_url_as_for_psql() -> None:
    from stocksync.adapters.database import tls_options

    plain = "postgresql://u@h/db?host=%2Frun%2Fpg"
    assert tls_options(plain) == (plain, {})
    assert tls_options("postgresql://u@h/db?sslmode=require") == ("postgresql://u@h/db", {"ssl": "require"})
    url, options = tls_options(
        "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt&x=1"
    )
    assert url == "postgresql://u@h/db?x=1"
    assert options["ssl"].check_hostname and options["ssl"].verify_mode == ssl.CERT_REQUIRED


def test_the_service_seed_comes_inline_or_from_a_seed_or_creds_file(tmp_path: Path) -> None:
    seed = new_seed("user")
    creds = tmp_path / "service.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.sig\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    plain = tmp_path / "service.nk"
    plain.write_text(seed + "\n")
    configured = [Settings(nats_nkey_seed=seed), *(Settings(nats_creds=str(path)) for path in (creds, plain))]
    for settings in configured:
        assert service_options(settings) == {"nkeys_seed_str": seed}
    assert service_options(Settings()) == {}
