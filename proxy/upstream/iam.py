"""AWS RDS IAM database authentication: the shared DB identity's password is a fresh token.

`generate_db_auth_token` is a local SigV4 presign (no network; 0.1–0.4 ms), valid 900 s and
checked only when a connection authenticates, so every new upstream connection gets its own
(never a pool's stored password). Credentials come from boto3's default chain (environment,
shared profile, instance profile / IRSA, assume-role through a profile); refreshing them may
reach the network, so tokens are made in a worker thread. A token is a bearer secret: it never
appears in a log, an error or an audit event (`UpstreamError.detail` carries none).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions

from proxy.upstream.connection import UpstreamError


@dataclass(frozen=True)
class IamTarget:
    host: str  # the endpoint's real hostname: a token signed for a CNAME does not verify
    port: int
    user: str
    region: str
    profile: str | None = None  # a shared-config profile (may assume a role)
    account_id: str | None = None  # only to print the exact ARN in errors
    resource_id: str | None = None  # the cluster's DbiResourceId / DbClusterResourceId, same

    @property
    def policy_resource(self) -> str:
        """The `rds-db:connect` resource an operator must allow (placeholders when unknown)."""
        account = self.account_id or "<account-id>"
        resource = self.resource_id or "<DbiResourceId or cluster-resource-id>"
        return f"arn:aws:rds-db:{self.region}:{account}:dbuser:{resource}/{self.user}"


class IamTokenSource:
    """Makes one token per call. The boto3 client is made once, on first use (about 150 ms),
    from `session_factory` (tests pass sessions with rotating keys)."""

    def __init__(self, target: IamTarget, session_factory: Callable[..., Any] = boto3.session.Session) -> None:
        self.target = target
        self._session_factory = session_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self.issued = 0

    def _rds(self) -> Any:
        with self._lock:
            if self._client is None:
                session = self._session_factory(profile_name=self.target.profile, region_name=self.target.region)
                self._client = session.client("rds", region_name=self.target.region)
            return self._client

    def token_sync(self) -> str:
        t = self.target
        try:
            token = self._rds().generate_db_auth_token(DBHostname=t.host, Port=t.port, DBUsername=t.user, Region=t.region)
        except botocore.exceptions.NoCredentialsError:
            raise UpstreamError(
                "jitproxy has no AWS credentials for IAM database authentication",
                "no credentials in the default chain: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a shared "
                "profile (upstream.iam.profile), an instance profile or IRSA (AWS_ROLE_ARN + "
                "AWS_WEB_IDENTITY_TOKEN_FILE)",
                "credentials",
            ) from None
        except botocore.exceptions.ProfileNotFound:
            raise UpstreamError(
                "jitproxy's AWS profile is missing", f"profile {t.profile!r} is not in the shared config", "credentials"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            # Refreshing credentials failed (an expired SSO session, STS refusing the role...).
            raise UpstreamError(
                "jitproxy could not obtain AWS credentials for IAM database authentication",
                f"{type(e).__name__}: {_first_line(e)}",
                "credentials",
            ) from None
        self.issued += 1
        return token

    async def token(self) -> str:
        return await asyncio.to_thread(self.token_sync)

    def refused(self, error: UpstreamError) -> UpstreamError:
        """The database refused a token: say what an operator can check, in order."""
        t = self.target
        return UpstreamError(
            error.public,
            f"{error.detail} — IAM authentication for {t.user!r} at {t.host}:{t.port} failed. Check: "
            f"(1) the proxy's IAM role allows rds-db:connect on {t.policy_resource}; "
            f"(2) upstream.iam.region {t.region!r} is the instance's region; "
            f"(3) upstream.host is the endpoint's own name, not a CNAME; "
            f"(4) this machine's clock is right (tokens are signed with it; 900 s validity); "
            f"(5) the AWS credentials are not expired; "
            f"(6) the DB user exists with AWSAuthenticationPlugin ('IDENTIFIED WITH AWSAuthenticationPlugin AS "
            f"\\'RDS\\'') and REQUIRE SSL.",
            "refused",
        )


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:300] if str(e) else ""
