"""Downloads no URL can stall or abuse: each hostile server behaviour, served on 127.0.0.1."""

from __future__ import annotations

import io
import time
from ipaddress import ip_address

import img2dataset.writer  # noqa: F401 - imported here (seconds) so the timings below measure downloads
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.acquire.download import AcquireConfig, ShardLayout, download_shard
from curate.acquire.fetch import AddressPolicy
from curate.acquire.inputs import download_rows, prepare_inputs
from curate.acquire.raw import read_shard
from curate.demo.corpus import WebObject
from curate.demo.server import Hostile, LoopbackServer
from curate.recipe import RecipeError, build_recipe, load_recipe

LOOPBACK_ONLY = ["127.0.0.1/32"]  # the test server; every other internal address stays refused
# Internal targets are other loopback addresses (127.0.0.2, [::1]): refused by the policy, and even a
# broken policy could not send traffic off this machine. Other private ranges are checked without I/O.
# Internal targets are other loopback addresses (127.0.0.2, [::1]): refused by the policy, and even a
# broken policy could not send traffic off this machine. Other private ranges are checked without I/O.
BANNER = "SECRET-BANNER internal-admin v9.1"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (seed * 40 % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def objects() -> dict:
    ok = {f"/ok{i}.jpg": WebObject(f"/ok{i}.jpg", jpeg(i), "image/jpeg") for i in range(12)}
    slow = {f"/slow{i}.jpg": WebObject(f"/slow{i}.jpg", jpeg(i), "image/jpeg", delay_s=0.3) for i in range(8)}
    chain = {f"/chain{i}": Hostile("redirect", target=f"/chain{i + 1}") for i in range(8)}
    return (
        ok
        | slow
        | chain
        | {
            "/chain8": Hostile("redirect", target="/ok0.jpg"),
            "/drip-head": Hostile("drip_head", size=100, interval_s=0.3),
            "/drip-body": Hostile("drip_body", size=100, interval_s=0.3),
            "/huge": Hostile("huge", size=300_000_000),
            "/huge-unsized": Hostile("huge_unsized", size=300_000_000),
            "/to-ftp": Hostile("redirect", target="ftp://127.0.0.1/ok0.jpg"),
            "/to-metadata": Hostile("redirect", target="http://127.0.0.2/latest/meta-data/", status=301),
            "/to-private": Hostile("redirect", target="http://[::1]/admin", status=307),
            "/loop-a": Hostile("redirect", target="/loop-b"),
            "/loop-b": Hostile("redirect", target="/loop-a"),
            "/noai": Hostile("robots", target="noai", body=jpeg(1)),
            "/other-bot": Hostile("robots", target="otherbot: noai", body=jpeg(2)),
            "/our-bot": Hostile("robots", target="curatetest: noimageai", body=jpeg(3)),
            "/banner": Hostile("banner", target=BANNER, status=500),
        }
    )


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(objects()) as s:
        yield s


def download(tmp_path, urls: list[str], **settings) -> tuple[list[dict], float]:
    """One shard of ``urls`` through ``download_shard``; the rows as ``read_shard`` gives them, and seconds."""
    table = pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]})
    inputs = prepare_inputs(table, load_recipe("demo").input, len(urls), "test")
    (tmp_path / "input").mkdir()
    pq.write_table(inputs, tmp_path / "input" / "urls.parquet")  # an earlier version's layout: reads fall back to it
    (tmp_path / "raw").mkdir()
    layout = ShardLayout(len(urls), len(urls))
    start = time.perf_counter()
    download_shard(0, download_rows(inputs, layout, 0, []), str(tmp_path / "raw"), layout, AcquireConfig(**settings))
    seconds = time.perf_counter() - start
    return pa.concat_tables(read_shard(str(tmp_path), layout.shard_name(0))).to_pylist(), seconds


def test_a_drip_is_cut_at_the_wall_clock_deadline(server, tmp_path):
    """1 byte per 0.3 s in the status line or the body: a per-socket timeout never fires."""
    urls = [server.url("/drip-head"), server.url("/drip-body"), server.url("/ok0.jpg")]
    rows, seconds = download(tmp_path, urls, timeout=1.5, allow_private_addresses=LOOPBACK_ONLY)
    assert [r["status"] for r in rows] == ["download_timeout", "download_timeout", "success"]
    assert seconds < 3 * 1.5  # the drips would take 30 s each
    assert all(r["image"] is None for r in rows[:2])


def test_bodies_over_the_cap_are_refused_and_never_stored(server, tmp_path):
    urls = [server.url("/huge"), server.url("/huge-unsized"), server.url("/ok1.jpg")]
    rows, seconds = download(tmp_path, urls, max_bytes=1 << 20, allow_private_addresses=LOOPBACK_ONLY)
    assert [r["status"] for r in rows] == ["too_large_download", "too_large_download", "success"]
    assert sum(p.stat().st_size for p in (tmp_path / "raw").iterdir()) < 1 << 20
    assert seconds < 20


def test_the_default_size_cap_is_32_mib(server, tmp_path):
    assert AcquireConfig().max_bytes == 32 * 1024 * 1024 and AcquireConfig().timeout == 20
    rows, _ = download(tmp_path, [server.url("/huge-unsized")], allow_private_addresses=LOOPBACK_ONLY)
    assert rows[0]["status"] == "too_large_download"


def test_internal_addresses_are_refused_before_connecting_in_every_form(server, tmp_path):
    port = server.base_url.rsplit(":", 1)[1]
    hosts = ["127.0.0.1", "localhost", "2130706433", "[::1]", "0x7f.0.0.1", "127.1", "[::ffff:127.0.0.1]", "0.0.0.0"]
    urls = [f"http://{host}:{port}/ok{i}.jpg" for i, host in enumerate(hosts)]
    before = server.hits
    rows, _ = download(tmp_path, urls)  # the default: allow_private_addresses false
    assert [r["status"] for r in rows] == ["blocked_address"] * len(hosts)
    assert server.hits == before  # no request reached the server


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
        "240.0.0.1", "255.255.255.255", "127.0.0.2", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::a00:1", "64:ff9b::a9fe:a9fe", "2002:a00:1::1",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ],
)  # fmt: skip
def test_the_address_policy_refuses_internal_ranges_and_their_ipv6_forms(ip):
    assert not AddressPolicy().permits(ip_address(ip))
    assert AddressPolicy(allow_all=True).permits(ip_address(ip))


def test_the_address_policy_permits_public_addresses_and_allowed_networks():
    assert all(AddressPolicy().permits(ip_address(ip)) for ip in ("93.184.216.34", "2606:4700::1111"))
    lo = AddressPolicy.from_setting(["127.0.0.1/32"])
    assert lo.permits(ip_address("127.0.0.1")) and lo.permits(ip_address("::ffff:127.0.0.1"))
    assert not lo.permits(ip_address("127.0.0.2")) and not lo.permits(ip_address("10.0.0.1"))


def test_redirects_are_followed_by_hand_and_each_hop_is_checked(server, tmp_path):
    names = ["/to-ftp", "/to-metadata", "/to-private", "/loop-a", "/chain0", "/chain5"]
    rows, seconds = download(tmp_path, [server.url(n) for n in names], allow_private_addresses=LOOPBACK_ONLY)
    got = [r["status"] for r in rows]
    # loop-a <-> loop-b; chain0 takes 9 hops > max_redirects 5; chain5 -> ... -> ok0 takes 4
    assert got[:3] == ["blocked_redirect", "blocked_address", "blocked_address"]
    assert got[3:] == ["failed_to_download", "failed_to_download", "success"]
    assert "loop" in rows[3]["error_message"] and "redirects" in rows[4]["error_message"]
    assert seconds < 10


def test_error_text_is_bounded_and_never_holds_a_response(server, tmp_path):
    rows, _ = download(tmp_path, [server.url("/banner"), server.url("/nope")], allow_private_addresses=True)
    assert [r["error_message"] for r in rows] == ["HTTP 500", "HTTP 404"]
    raw = pq.read_table(tmp_path / "raw" / "00000.parquet").to_pylist()
    assert not [v for r in raw for v in r.values() if isinstance(v, str) and ("SECRET" in v or "html" in v)]


def test_x_robots_tag_directives_refuse_a_download(server, tmp_path):
    urls = [server.url(p) for p in ("/noai", "/other-bot", "/our-bot")]
    rows, _ = download(tmp_path, urls, allow_private_addresses=LOOPBACK_ONLY, user_agent_token="CurateTest")
    assert [r["status"] for r in rows] == ["robots_disallowed", "success", "robots_disallowed"]


def test_user_agent_names_curate_and_the_contact_url():
    cfg = AcquireConfig(contact_url="https://example.org/contact", user_agent_token="mybot")
    assert cfg.fetch_config().user_agent == "curate/0.1.0 (+https://example.org/contact; mybot)"
    assert AcquireConfig().fetch_config().user_agent == "curate/0.1.0"


def test_max_per_domain_limits_concurrent_requests_to_a_host(tmp_path):
    slow = {k: v for k, v in objects().items() if k.startswith("/slow")}
    with LoopbackServer(slow) as limited:
        urls = [limited.url(p) for p in slow]
        download(tmp_path, urls, threads=8, max_per_domain=2, allow_private_addresses=True)
        assert limited.max_active == 2


@pytest.mark.parametrize("value", [".inf", "nan", "0"])
def test_the_recipe_refuses_a_timeout_that_bounds_nothing(value):
    with pytest.raises(RecipeError, match="timeout"):
        load_recipe("demo", [f"acquire.timeout={value}"])


def test_the_recipe_refuses_a_bad_address_allow_list():
    with pytest.raises(RecipeError, match="not an IP network"):
        load_recipe("demo", ["acquire.allow_private_addresses=[localhost]"])


@pytest.mark.slow
def test_a_run_ends_each_hostile_url_with_its_reason_and_never_requests_blocked_ones(server, ray_session, tmp_path):
    """`curate run` end to end: url_filter applies before acquire; the reasons reach decisions/."""
    cases = {
        "/ok2.jpg": None,
        "/ok3.jpg": "blocked_url",  # on the url_filter pattern below
        "/drip-body": "download_timeout",
        "/huge": "too_large_download",
        "/to-metadata": "blocked_address",
        "/to-ftp": "blocked_redirect",
        "/noai": "robots_disallowed",
        "/banner": "download_error",
    }
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\n" + "".join(f"{server.url(p)},a blue square\n" for p in cases))
    data = {
        "acquire": {"timeout": 1.5, "max_bytes": 1 << 20, "allow_private_addresses": LOOPBACK_ONLY},
        "annotate": ["image"],
        "decide": [{"policy": "url_filter", "patterns": ["/ok3\\.jpg$"]}],
    }
    from curate.run import run_pipeline

    before = server.hits["/ok3.jpg"]
    run_pipeline(build_recipe(data, "hostile"), urls, tmp_path / "run", until="decide")
    rows = pq.read_table(tmp_path / "run" / "decisions").to_pylist()
    got = {r["url"].removeprefix(server.base_url): r["reason"] for r in rows}
    assert got == cases
    assert server.hits["/ok3.jpg"] == before  # never requested
    assert {r["stage"] for r in rows if r["reason"] == "blocked_url"} == {"url_filter"}
