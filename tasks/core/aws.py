"""The one place where botocore exceptions become the project's errors (S3, Route53)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import botocore.exceptions as bexc

from tasks.core.errors import ConfigError, PermanentError, TransientError

__all__ = ["aws_errors"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "ObjectLockConfigurationNotFoundError"}
_TRANSIENT = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "500",
    "502",
    "503",
    "504",
}
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}


@contextlib.contextmanager
def aws_errors(service: str, what: str, missing: Mapping[str, str] | None = None) -> Iterator[None]:
    """Translate botocore failures while trying to ``what``.

    ``missing`` maps error codes that mean "the configured resource does not exist"
    (``NoSuchBucket``, ``NoSuchHostedZone``) to the one-line message to raise as ConfigError.
    Absent objects raise FileNotFoundError, so storage callers can treat them like files."""
    try:
        yield
    except bexc.NoCredentialsError as exc:
        raise ConfigError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
        ) from exc
    except (
        bexc.EndpointConnectionError,
        bexc.ConnectionClosedError,
        bexc.ReadTimeoutError,
        bexc.ConnectTimeoutError,
        bexc.ResponseStreamingError,
    ) as exc:
        raise TransientError(f"{service} unreachable while trying to {what}: {exc}") from exc
    except bexc.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if missing and code in missing:
            raise ConfigError(missing[code]) from exc
        if code in _NOT_FOUND:
            raise FileNotFoundError(f"{service}: {what}: not found") from exc
        if code in _DENIED:
            raise ConfigError(
                f"{service} denied access ({code}) while trying to {what}: check "
                "the AWS credentials and the policy"
            ) from exc
        if code in _TRANSIENT:
            raise TransientError(f"{service} error {code} while trying to {what}") from exc
        raise PermanentError(
            f"{service} error {code} while trying to {what}: {err.get('Message', '')}"
        ) from exc
    except bexc.BotoCoreError as exc:
        raise TransientError(f"{service} failure while trying to {what}: {exc}") from exc
