"""Encryption in the scheduled flows: the key comes from a Prefect Secret block named in
[encryption], the nightly backup encrypts with it, the weekly restore test decrypts with it."""

from __future__ import annotations

import base64
import json
import os

import pytest
from prefect.blocks.system import Secret

from flows.nightly_backup import nightly_backup
from flows.restore_test import restore_test
from tasks.core.crypto import EncryptionKey
from tests.flows.conftest import AppEnv, artifacts

pytestmark = pytest.mark.timeout(300)


def test_backups_encrypted_with_a_secret_block_and_restore_tested(app_env: AppEnv) -> None:
    raw = os.urandom(32)
    block = f"dr-backup-key-{app_env.dbname.replace('_', '-')}"
    Secret(value=base64.b64encode(raw).decode()).save(block, overwrite=True)
    app_env.write_config(encryption=f'[encryption]\nkey_block = "{block}"\n')

    state = nightly_backup(config=str(app_env.config), return_state=True)
    assert state.is_completed(), state.message
    [row] = artifacts(state)["nightly-backup"]
    manifest = json.loads((app_env.tmp / "backups" / row["backup"] / "manifest.json").read_text())
    assert manifest["artefacts"][0]["encryption"]["key_id"] == EncryptionKey(raw).key_id

    state = restore_test(config=str(app_env.config), return_state=True)
    assert state.is_completed(), state.message
    assert artifacts(state)["restore-test-evidence"].startswith("# restore test PASSED")
