"""The client against a real vault: round trips, reveals, errors,
settings from the environment, asyncio, and reconnecting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import phivault

SAMPLES = {
    "ssn": "123-45-6789",
    "card": "4111 1111 1111 1111",
    "phone": "+1 (555) 010-0199 x12",
    "email": "jane.doe@example.org",
    "dob": "1984-02-29",
    "name": "Zoë O'Brien",
    "mrn": "MRN-0042",
    "zip": "02139",
    "text": "Patient reports chest pain since Tuesday.",
}


def test_every_default_namespace_round_trips(vault, keys):
    namespaces = {n["name"] for n in vault.admin("GET", "/v1/namespaces")["namespaces"]}
    assert namespaces == set(SAMPLES), "a default namespace without a sample here"
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        for namespace, value in SAMPLES.items():
            [token] = client.tokenize(namespace, [value])
            assert token != value, namespace
            assert client.tokenize(namespace, [value]) == [token], "deterministic"
            assert client.detokenize(namespace, [token], purpose="TREAT") == [value], namespace
    log = vault.log()
    for value in SAMPLES.values():
        assert value not in log, "a value reached the server log"


def test_masked_reveal_shows_only_the_last_digits(vault, keys):
    with phivault.Client(vault.endpoint, api_key=keys["writer"]) as writer:
        [token] = writer.tokenize("ssn", ["078-05-1120"])
    with phivault.Client(vault.endpoint, api_key=keys["masked"]) as masked:
        [shown] = masked.detokenize("ssn", [token], masked=True)
        assert shown.endswith("1120") and "078" not in shown
        with pytest.raises(phivault.PermissionDenied) as refused:
            masked.detokenize("ssn", [token])
    assert refused.value.code == "PERMISSION_DENIED"
    assert token not in str(refused.value)


def test_scopes_and_keys_are_enforced(vault, keys):
    with phivault.Client(vault.endpoint, api_key=keys["writer"]) as writer:
        with pytest.raises(phivault.PermissionDenied):
            writer.tokenize("mrn", ["MRN-1"])
        with pytest.raises(phivault.PermissionDenied):
            writer.detokenize("ssn", ["123-45-6789"])
    with phivault.Client(vault.endpoint, api_key="pv_0000000000000000_notakey") as stranger:
        with pytest.raises(phivault.Unauthenticated) as refused:
            stranger.tokenize("ssn", ["123-45-6789"])
    assert "notakey" not in str(refused.value)
    assert isinstance(refused.value, phivault.CallError)


def test_item_errors_name_the_item_by_position_never_by_value(vault, keys):
    canary = "12-x-canary"
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        with pytest.raises(phivault.ItemErrors) as failed:
            client.tokenize("ssn", ["123-45-6789", canary, "987-65-4321"])
        [error] = failed.value.errors
        assert (error.index, error.code) == (1, "INVALID_ARGUMENT")
        assert canary not in str(failed.value) and canary not in repr(failed.value.errors)
        tokens = failed.value.results
        assert tokens[1] is None and tokens[0] and tokens[2]
        mixed = client.tokenize("ssn", ["123-45-6789", canary], errors="return")
        assert mixed[0] == tokens[0] and isinstance(mixed[1], phivault.ItemError)
        unknown = client.detokenize("ssn", ["999-99-9999"], errors="return")
        assert isinstance(unknown[0], phivault.ItemError) and unknown[0].code == "NOT_FOUND"
        with pytest.raises(ValueError):
            client.tokenize("ssn", [], errors="ignore")
        with pytest.raises(TypeError):
            client.tokenize("ssn", "123-45-6789")
    assert canary not in vault.log()


def test_settings_come_from_the_clis_environment(vault, keys, monkeypatch, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(keys["pipeline"] + "\n")
    monkeypatch.setenv("PHIVAULT_ENDPOINT", vault.endpoint)
    monkeypatch.setenv("PHIVAULT_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("PHIVAULT_DEADLINE", "10s")
    with phivault.Client() as client:
        assert client.health()
        info = client.server_info()
        assert info["store"] and info["max_items"] >= 1000
        assert client.tokenize("ssn", ["123-45-6789"])
    monkeypatch.setenv("PHIVAULT_DEADLINE", "soon")
    with pytest.raises(phivault.ConfigurationError):
        phivault.Client()


def test_plaintext_off_loopback_is_refused_before_anything_is_sent(keys):
    with pytest.raises(phivault.ConfigurationError) as refused:
        phivault.Client("http://192.0.2.10:50051", api_key=keys["pipeline"])
    assert "plaintext" in str(refused.value)
    assert keys["pipeline"] not in str(refused.value)


def test_an_unreachable_vault_says_so(keys):
    with pytest.raises(phivault.ConnectError):
        phivault.Client("http://127.0.0.1:9", api_key=keys["pipeline"])


def test_a_closed_client_refuses_calls(vault, keys):
    client = phivault.Client(vault.endpoint, api_key=keys["pipeline"])
    with client:
        assert client.tokenize("ssn", ["123-45-6789"])
    with pytest.raises(phivault.ClosedError):
        client.tokenize("ssn", ["123-45-6789"])


def test_the_asyncio_client(vault, keys):
    async def main():
        async with phivault.AsyncClient(vault.endpoint, api_key=keys["pipeline"]) as client:
            values = [f"{100 + i:03d}-45-{i:04d}" for i in range(200)]
            batches = [values[i : i + 50] for i in range(0, 200, 50)]
            tokens = await asyncio.gather(*(client.tokenize("ssn", b) for b in batches))
            flat = [t for batch in tokens for t in batch]
            back = await client.detokenize("ssn", flat, purpose="TREAT")
            assert back == values
            column = await client.tokenize_column("ssn", [values[0], None, values[1]])
            assert column == [flat[0], None, flat[1]]
            with pytest.raises(phivault.ItemErrors):
                await client.tokenize("ssn", ["nope"])

    asyncio.run(main())


def test_a_long_column_keeps_its_order_and_nulls(vault, keys):
    cells = [None if i % 7 == 0 else f"{200 + i % 500:03d}-{i % 90 + 10:02d}-{i % 9000 + 1000:04d}" for i in range(25_000)]
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        tokens = client.tokenize_column("ssn", cells, batch_size=700, in_flight=4)
        assert [t is None for t in tokens] == [c is None for c in cells]
        assert client.detokenize_column("ssn", tokens) == cells


def test_the_client_reconnects_across_a_server_restart(own_vault):
    key = own_vault.create_client("py-restart", ["tokenize:ssn", "detokenize:ssn"])
    values = [f"{300 + i % 400:03d}-12-{i:04d}" for i in range(5000)]
    with phivault.Client(own_vault.endpoint, api_key=key) as client:
        [before] = client.tokenize("ssn", [values[0]])
        own_vault.restart()
        # The connection the client held is gone; the same client carries on.
        assert client.tokenize("ssn", [values[0]]) == [before]
        tokens = client.tokenize_column("ssn", values, batch_size=100, in_flight=2)
        own_vault.restart()
        assert client.detokenize_column("ssn", tokens, batch_size=100) == values


def test_a_column_call_sends_again_what_a_killed_node_left_unanswered(own_vault):
    key = own_vault.create_client("py-killed", ["tokenize:ssn"])
    values = [f"{100 + i % 600:03d}-{10 + i // 600 % 89:02d}-{1000 + i // 53400:04d}" for i in range(60_000)]
    client = phivault.Client(own_vault.endpoint, api_key=key)
    outcome = {}

    def run():
        try:
            outcome["tokens"] = client.tokenize_column("ssn", values, batch_size=200, in_flight=2)
        except BaseException as e:  # the assertion below says what it was
            outcome["error"] = e

    caller = threading.Thread(target=run)
    caller.start()
    deadline = time.monotonic() + 60
    stream = "/phivault.v1.Tokenizer/TokenizeStream"
    while own_vault.metric("phivault_grpc_calls_in_progress", stream) < 1:
        assert caller.is_alive() and time.monotonic() < deadline, "the stream never started"
        time.sleep(0.01)
    # The node dies mid-stream; a new one comes up where it was.
    own_vault.restart(kill=True)
    caller.join(timeout=180)
    assert not caller.is_alive()
    assert "error" not in outcome, repr(outcome.get("error"))
    tokens = outcome["tokens"]
    assert len(tokens) == len(values) and None not in tokens
    # The new node answered a stream: what the killed one left was sent again.
    assert own_vault.metric("phivault_grpc_calls_total", stream) >= 1
    # Each value has the token a call of its own gives it, in its place.
    again = []
    for i in range(0, len(values), 5000):
        again.extend(client.tokenize("ssn", values[i : i + 5000]))
    assert tokens == again
    client.close()


def test_no_repr_pickle_or_exception_holds_the_key(vault, keys):
    import pickle

    key = keys["pipeline"]
    secret = key.rsplit("_", 1)[1]
    with phivault.Client(vault.endpoint, api_key=key) as client:
        assert secret not in repr(client) and "127.0.0.1" not in repr(client)
        with pytest.raises(TypeError):
            pickle.dumps(client)
    lazy = phivault.AsyncClient(vault.endpoint, api_key=key)
    assert secret not in repr(lazy)
    with pytest.raises(TypeError):
        pickle.dumps(lazy)
    # Exceptions cross process pools whole, with their codes.
    error = pickle.loads(pickle.dumps(phivault.ResourceExhausted("RESOURCE_EXHAUSTED", "over the rate", 1.5)))
    assert isinstance(error, phivault.ResourceExhausted) and error.retry_after == 1.5
    items = pickle.loads(pickle.dumps(phivault.ItemErrors([phivault.ItemError(2, "NOT_FOUND", "no such token")], ["a", None])))
    assert items.errors[0].index == 2 and items.results == ["a", None]


def test_numbers_that_cannot_be_durations_are_refused(vault, keys):
    with pytest.raises(phivault.ConfigurationError):
        phivault.Client(vault.endpoint, api_key=keys["pipeline"], deadline=float("inf"))
    with pytest.raises(phivault.ConfigurationError):
        phivault.Client(vault.endpoint, api_key=keys["pipeline"], deadline=0)
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        with pytest.raises(phivault.ConfigurationError):
            client.tokenize_column("ssn", ["123-45-6789"], retry_for=float("nan"))


def test_text_that_is_not_unicode_is_refused_by_position(vault, keys):
    broken = b"123-45-67\xff9".decode("utf-8", "surrogateescape")
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        with pytest.raises(ValueError) as refused:
            client.tokenize("ssn", ["123-45-6789", broken])
        assert "1" in str(refused.value) and "67" not in str(refused.value) and refused.value.__cause__ is None
        with pytest.raises(ValueError):
            client.tokenize_column("ssn", [None, broken])


def test_ready_follows_the_write_path(vault, keys):
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as client:
        assert client.ready() and client.health()

    async def main():
        async with phivault.AsyncClient(vault.endpoint, api_key=keys["pipeline"]) as client:
            assert await client.ready()
            assert (await client.server_info())["max_items"] >= 1000
            [token] = await client.tokenize("ssn", ["123-45-6789"])
            assert await client.detokenize_column("ssn", [token, None]) == ["123-45-6789", None]

    asyncio.run(main())
