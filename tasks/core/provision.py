"""Provisioning for infrastructure loss: ``terraform apply`` in a configured directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tasks.core.dburl import redact
from tasks.core.errors import CommandFailed, ConfigError

__all__ = ["terraform_apply"]


def terraform_apply(directory: Path, *, timeout_s: float = 3600) -> str:
    """``terraform init`` + ``apply -auto-approve``; returns the last line of its output.
    ConfigError when terraform is not installed or the directory does not exist."""
    tool = shutil.which("terraform")
    if tool is None:
        raise ConfigError("terraform is not installed on this worker")
    if not directory.is_dir():
        raise ConfigError(f"terraform directory {directory} does not exist")
    for args in (["init", "-input=false"], ["apply", "-auto-approve", "-input=false"]):
        proc = subprocess.run(
            [tool, f"-chdir={directory}", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"]
            raise CommandFailed(f"terraform {args[0]} failed: {redact(lines[-1])}")
    out = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return redact(out[-1]) if out else "applied"
