"""URL rules: reject samples whose domain or URL matches a blocklist."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.decide.base import DecideDB, Policy, PolicyConfig

BATCH_ROWS = 65_536
"""URLs checked at a time."""

HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/:?#]+)"


class UrlFilterConfig(PolicyConfig):
    domains: list[str] = Field(
        default_factory=list, description="Blocked domains; a domain also blocks its subdomains."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Blocked URL regular expressions (RE2 syntax, searched anywhere).",
    )
    file: str | None = Field(
        None,
        description="A blocklist file: one domain per line, or 're:' + a pattern; '#' starts a comment.",
    )


class UrlFilter(Policy):
    """Reject URLs on a domain blocklist (subdomains included) or matching a blocked pattern."""

    name = "url_filter"
    Config = UrlFilterConfig
    reads = ("url",)
    reasons = ("blocked_url",)

    def apply(self, db: DecideDB) -> None:
        domains, patterns = self.blocklist()
        if not domains and not patterns:
            return
        reader = db.con.sql("SELECT key, url FROM kept").fetch_arrow_reader(
            BATCH_ROWS
        )  # streamed: only the blocked keys are held
        blocked = [
            pa.table({"key": batch.column("key")}).filter(blocked_mask(batch.column("url"), domains, patterns))
            for batch in reader
        ]
        if blocked:
            db.reject_keys(pa.concat_tables(blocked), "blocked_url", self.name)

    def blocklist(self) -> tuple[set[str], list[str]]:
        """Domains (lower-case) and patterns from the recipe and the blocklist file."""
        domains = {d.strip().lower().rstrip(".") for d in self.config.domains if d.strip()}
        patterns = list(self.config.patterns)
        if self.config.file:
            for line in Path(self.config.file).read_text().splitlines():
                entry = line.split("#", 1)[0].strip()
                if entry.startswith("re:"):
                    patterns.append(entry[3:])
                elif entry:
                    domains.add(entry.lower().rstrip("."))
        return domains, patterns


def blocked_mask(urls: pa.ChunkedArray, domains: set[str], patterns: list[str]) -> pa.Array:
    """True where a URL's host is a blocked domain or a subdomain of one, or a pattern matches."""
    hosts = pc.utf8_lower(pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), HOST), "host"))
    mask = pa.array([_under(host, domains) for host in hosts.to_pylist()], pa.bool_())
    for pattern in patterns:
        mask = pc.or_(mask, pc.fill_null(pc.match_substring_regex(urls, pattern), False))
    return mask


def _under(host: str | None, domains: set[str]) -> bool:
    if not host or not domains:
        return False
    parts = host.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts)))


def acquire_blocklist(policies: list[Policy]) -> tuple[set[str], list[str]] | None:
    """Domains and patterns of every ``url_filter`` policy among ``policies``, applied before acquire (None if none)."""
    filters = [p for p in policies if isinstance(p, UrlFilter)]
    if not filters:
        return None
    domains: set[str] = set()
    patterns: list[str] = []
    for policy in filters:
        d, p = policy.blocklist()
        domains |= d
        patterns += p
    return domains, patterns
