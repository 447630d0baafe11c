"""The figures of docs/reliability.md, from a run of the fault-injection suite.

    python -m tests.faults.report              run tests/faults, then write the figures
    python -m tests.faults.report --from F     write the figures of an earlier run's records

The records come from the ``fault`` fixture (tests/faults/conftest.py) through
``DR_FAULT_REPORT``; the figures replace what lies between the markers in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- fault-figures:start -->", "<!-- fault-figures:end -->"


def render(records: list[dict[str, Any]], when: datetime, exit_code: int) -> str:
    injected = [r for r in records if r["injected"]]
    survived = [r for r in injected if r["survived"]]
    lines = [
        f"Last run: {when:%Y-%m-%d %H:%M} UTC, `python -m tests.faults.report` "
        f"(pytest exit code {exit_code}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| faults injected | {len(injected)} |",
        f"| survived (every promise of the row held) | {len(survived)} |",
        f"| data lost | {sum(r['data_lost'] for r in records)} |",
        f"| false OK | {sum(r['false_ok'] for r in records)} |",
        "",
        "| fault | during | test | result |",
        "|---|---|---|---|",
    ]
    for r in records:
        test = r["test"].split("::", 1)[1]
        verdict = "survived" if r["survived"] else ("FAILED" if r["injected"] else "not injected")
        flags = (("data lost", r["data_lost"]), ("false OK", r["false_ok"]))
        extra = [what for what, bad in flags if bad]
        lines.append(
            f"| {r['fault']} | {r['during']} | `{test}` | {', '.join([verdict, *extra])} |"
        )
    return "\n".join(lines)


def write(figures: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{START}\n{figures}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="records of an earlier run")
    args = parser.parse_args()
    exit_code = 0
    if args.source is None:
        fd, name = tempfile.mkstemp(prefix="dr-faults-", suffix=".json")
        os.close(fd)
        source = Path(name)
        exit_code = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider"],
            cwd=REPO,
            env={**os.environ, "DR_FAULT_REPORT": str(source)},
            check=False,
        ).returncode
    else:
        source = args.source
    records = json.loads(source.read_text())
    write(render(records, datetime.now(UTC), exit_code))
    print(f"figures written to {DOC}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
