"""The tool version recorded in every manifest."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = f"dr-pipelines {version('dr-pipelines')}"
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "dr-pipelines (source)"
