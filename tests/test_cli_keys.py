"""Keys changed through the CLI are refused by an already-running server on the next request."""

from __future__ import annotations

from tests.harness import Harness


async def test_cli_issue_then_revoke_is_refused_by_running_server(gateway: Harness) -> None:
    h = gateway
    code, out, err = await h.cli("keys", "issue", "dave")
    assert code == 0, err
    key = out.strip()
    assert key.count(".") == 2 and key not in err
    assert await h.status_of(key) == 200
    code, _, err = await h.cli("keys", "revoke", "dave", "--reason", "dropped the course")
    assert code == 0, err
    assert await h.status_of(key) == 403


async def test_cli_bad_input_exits_2_with_one_line(gateway: Harness) -> None:
    h = gateway
    code, _, err = await h.cli("course", "create", "x", "--limit", "lots", "--reset-period", "7d")
    assert code == 2 and "token amount" in err and err.count("\n") == 1
    code, _, err = await h.cli("keys", "suspend", "nobody")
    assert code == 2 and "nobody" in err


async def test_cli_records_commands(gateway: Harness) -> None:
    h = gateway
    assert await h.status_of(h.key) == 200
    await h.flush()
    code, out, err = await h.cli("incidents", "--open")
    assert code == 0 and "no incidents open" in out, err
    code, out, err = await h.cli("ledger", "rebuild")
    assert code == 0 and "rebuilt 1 bucket(s)" in out, err
    code, _, err = await h.cli("transcripts", "show", "req_does_not_exist")
    assert code == 2 and "no transcript" in err
