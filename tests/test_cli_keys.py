"""Keys changed through the CLI are refused by an already-running server on the next request."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from tests.harness import KEY_SECRET, Harness

MESSAGE = {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}


async def _cli(h: Harness, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "GATEWAY_REDIS_URL": h.settings.redis_url or "", "GATEWAY_DATABASE_URL":
           h.settings.database_url or "", "GATEWAY_REDIS_PREFIX": h.settings.redis_prefix,
           "GATEWAY_KEY_SECRET": KEY_SECRET, "GATEWAY_DATA_DIR": str(h.settings.data_dir),
           "GATEWAY_COURSE": h.course}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _status(h: Harness, key: str) -> int:
    async with aiohttp.ClientSession() as session, session.post(
        h.url + "/v1/messages", json=MESSAGE, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_cli_issue_then_revoke_is_refused_by_running_server(gateway: Harness) -> None:
    h = gateway
    code, out, err = await _cli(h, "keys", "issue", "dave")
    assert code == 0, err
    key = out.strip()
    assert key.count(".") == 2 and key not in err
    assert await _status(h, key) == 200
    code, _, err = await _cli(h, "keys", "revoke", "dave", "--reason", "dropped the course")
    assert code == 0, err
    assert await _status(h, key) == 403


async def test_cli_bad_input_exits_2_with_one_line(gateway: Harness) -> None:
    h = gateway
    code, _, err = await _cli(h, "course", "create", "x", "--limit", "lots", "--reset-period", "7d")
    assert code == 2 and "token amount" in err and err.count("\n") == 1
    code, _, err = await _cli(h, "keys", "suspend", "nobody")
    assert code == 2 and "nobody" in err


async def test_cli_records_commands(gateway: Harness) -> None:
    h = gateway
    assert await _status(h, h.key) == 200
    await h.flush()
    code, out, err = await _cli(h, "incidents", "--open")
    assert code == 0 and "no incidents open" in out, err
    code, out, err = await _cli(h, "ledger", "rebuild")
    assert code == 0 and "rebuilt 1 bucket(s)" in out, err
    code, _, err = await _cli(h, "transcripts", "show", "req_does_not_exist")
    assert code == 2 and "no transcript" in err
