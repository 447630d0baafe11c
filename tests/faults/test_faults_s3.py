"""S3 faults in the middle of a response body (docs/reliability.md): a real TCP proxy in front
of moto relays a GET response's headers and its first bytes, then resets the connection."""

from __future__ import annotations

import hashlib
from contextlib import closing
from pathlib import Path

import boto3
import pytest

from tasks.core.backup import backup_database
from tasks.core.catalog import Catalog
from tasks.core.dburl import parse_database_url
from tasks.core.pgcluster import PgCluster
from tasks.core.storage.local import LocalStorage
from tasks.core.storage.s3 import S3Storage
from tests.conftest import psql, run_dr
from tests.core.test_s3_resume import CuttingProxy
from tests.faults.conftest import Fault

pytestmark = pytest.mark.timeout(180)

CUT_AFTER = 3 << 20  # body bytes relayed before the reset: several 1 MiB chunks got through


def _artefact_get(data: bytes) -> bool:
    return data.startswith(b"GET ") and b"database.pgdump.zst" in data.split(b"\r\n", 1)[0]


@pytest.mark.fault("S3 endpoint down / connection reset", "download, mid-body")
def test_s3_connection_reset_in_the_middle_of_the_download_is_resumed(
    fault: Fault, pg: PgCluster, clone, big_template: str, tmp_path: Path, bucket: str,
    moto_endpoint: str,
) -> None:  # fmt: skip
    url = pg.url_for(clone(big_template))
    backups = tmp_path / "backups"
    m = backup_database(
        parse_database_url(url), Catalog([LocalStorage(backups), S3Storage(bucket)])
    ).manifest
    art = m.artefacts[0]
    assert art.size > 3 * CUT_AFTER  # the cuts fall in the middle of the body
    (backups / art.key).unlink()  # the local copy is lost: S3 is needed
    psql(url, "UPDATE marker SET v = 'after the backup'")
    port = int(moto_endpoint.rsplit(":", 1)[1])
    with closing(CuttingProxy(port, _artefact_get, CUT_AFTER, 2)) as proxy:
        r = run_dr(
            "restore", "--database-url", url, "--latest", "--confirm", "--drop-existing",
            "--backup-dir", str(backups), "--s3-bucket", bucket,
            env={"AWS_ENDPOINT_URL": proxy.endpoint},
        )  # fmt: skip
    fault.injected()
    restored = psql(url, "SELECT v FROM marker") if r.returncode == 0 else None
    # the bytes read in-process through two more cuts are exactly the object's
    with closing(CuttingProxy(port, _artefact_get, CUT_AFTER, 2)) as again:
        s3 = S3Storage(bucket, client=boto3.client("s3", endpoint_url=again.endpoint))
        digest = hashlib.sha256()
        for chunk in s3.get(art.key):
            digest.update(chunk)
    fault.outcome(
        reported_ok=r.returncode == 0,
        truly_ok=restored == "original",
        data_intact=digest.hexdigest() == art.sha256,
    )
    assert r.returncode == 0, r.stderr
    assert restored == "original"  # the backup's data, checksum-verified before the switch
    assert proxy.cuts == 2  # two resets in the middle of the body, both resumed
    resumed = [h.lower() for h in proxy.requests if b"\r\nrange: bytes=" in h.lower()]
    assert len(resumed) == 2
    assert all(b"\r\nif-match: " in h for h in resumed)  # only the same object is resumed
    assert again.cuts == 2
    assert digest.hexdigest() == art.sha256
