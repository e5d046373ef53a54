"""The web page in a real browser: headless Chromium loads /ui from a running 3-node cluster of
real processes, shows the cluster, uploads a file, lists it, downloads it byte-identical and
shows siblings; a screenshot is left for any failure (its path is in the failure message)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cdp import Chromium, Page
from e2e_setup import artifacts_dir_fixture, chromium_fixture, cluster_fixture  # noqa: F401

pytestmark = pytest.mark.slow

RING_SIZE = 16  # the e2e cluster's (conftest.SPEC)
FILE_BYTES = 300 * 1024  # several 64 KiB chunks: the upload streams, the download reassembles
PAGE_TIMEOUT_S = 30.0


def js(value: object) -> str:
    return json.dumps(value)


@contextmanager
def screenshot_on_failure(page: Page, folder: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        try:
            shot = page.screenshot(folder / f"{name}.png")
        except Exception as shot_error:  # the browser itself may be what failed
            exc.add_note(f"no screenshot: {shot_error}")
        else:
            exc.add_note(f"screenshot of the page: {shot}")
        raise


def listed(list_id: str, name: str) -> str:
    """A condition: the page's list shows an entry for `name`."""
    return (
        f"[...document.querySelectorAll('{list_id} li')].some(li => li.dataset.name === {js(name)})"
    )


def object_shown(key: str, siblings: int) -> str:
    """A condition: the object view shows `key` with this many siblings, download links and all."""
    return (
        f"document.querySelector('#object strong')?.textContent === {js(key)}"
        f" && document.querySelectorAll('#object .sibling').length === {siblings}"
        f" && document.querySelectorAll('#object a.download').length === {siblings}"
    )


def members_up(page: Page, count: int) -> None:
    page.wait_for(
        f"document.querySelectorAll('#members tbody .state.up').length === {count}",
        timeout_s=PAGE_TIMEOUT_S,
    )


def upload(page: Page, bucket: str, path: Path) -> None:
    page.evaluate(f"document.querySelector('#upload-bucket').value = {js(bucket)}")
    page.set_files("#upload-file", [path])
    page.evaluate("document.querySelector('#upload-submit').click()")
    result = page.wait_for(
        "(() => { const r = document.querySelector('#upload-result');"
        " return r.className !== 'muted' && [r.className, r.textContent]; })()",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert result[0] == "ok", result[1]


def test_upload_list_download_and_siblings_in_chromium(
    cluster, chromium: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    rng = random.Random(5)
    first = rng.randbytes(FILE_BYTES)
    second = rng.randbytes(FILE_BYTES // 3)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    (tmp_path / "v1" / "photo.bin").write_bytes(first)
    (tmp_path / "v2" / "photo.bin").write_bytes(second)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    node1, node2 = cluster.slot(1).http_url, cluster.slot(2).http_url

    with Chromium.launch(chromium, tmp_path / "browser") as browser:
        page = browser.new_page()
        browser.allow_downloads(downloads)
        with screenshot_on_failure(page, artifacts_dir, "ui-node1"):
            page.navigate(node1 + "/ui")
            # The cluster as node 1 sees it: three members up, the ring coloured by owner.
            members_up(page, 3)
            assert page.evaluate("document.querySelector('#node-name').textContent") == "node1"
            partitions = page.evaluate(
                "[...document.querySelectorAll('#ring path.partition')]"
                ".map(p => [p.dataset.owner, p.getAttribute('fill')])"
            )
            assert len(partitions) == RING_SIZE
            owners = {owner for owner, _ in partitions}
            assert owners == {"node1", "node2", "node3"}
            assert len({fill for _, fill in partitions}) == 3  # one colour per owner
            owned = page.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#members tbody tr')]"
                ".map(r => [r.dataset.member, Number(r.cells[2].textContent)]))"
            )
            assert sum(owned.values()) == RING_SIZE and all(n >= 5 for n in owned.values())
            assert page.evaluate("document.querySelector('#handoffs-empty').hidden") is False

            # Upload through the form; the page then lists the key and shows the object.
            upload(page, "photos", tmp_path / "v1" / "photo.bin")
            page.wait_for(listed("#buckets", "photos"))
            page.wait_for(listed("#keys", "photo.bin"))
            page.wait_for(object_shown("photo.bin", 1))
            assert "300.0 KiB" in page.evaluate("document.querySelector('#object').textContent")

            # Download through the page's link: the browser saves exactly what was uploaded.
            page.evaluate("document.querySelector('#object a.download').click()")
            assert browser.wait_download(downloads).read_bytes() == first

            # Live request rates: the upload and the listings were counted.
            page.wait_for(
                "[...document.querySelectorAll('#rates tbody tr')]"
                ".some(r => r.dataset.operation === 'ui_upload')",
                timeout_s=PAGE_TIMEOUT_S,
            )

            # A second upload of the same key without its vclock: two siblings, both shown.
            upload(page, "photos", tmp_path / "v2" / "photo.bin")
            page.wait_for(object_shown("photo.bin", 2))
            vtags = page.evaluate(
                "[...document.querySelectorAll('#object .sibling')].map(s => s.dataset.vtag)"
            )
            assert len(set(vtags)) == 2 and all(vtags)

            # A name with markup, spaces, "+", "%" and non-ASCII is shown as text and its
            # URL carries the exact bytes.
            odd = "<b>bold<i> & +%ü.txt"
            (tmp_path / "odd").mkdir()
            (tmp_path / "odd" / odd).write_bytes(b"odd")
            upload(page, "photos", tmp_path / "odd" / odd)
            page.wait_for(listed("#keys", odd))
            page.wait_for(object_shown(odd, 1))
            assert page.evaluate("document.querySelectorAll('#keys b').length") == 0
            page.evaluate("document.querySelector('#object a.download').click()")
            assert browser.wait_download(downloads).read_bytes() == b"odd"

        # Another node's page opened on the object (the link an upload without JavaScript
        # returns to) shows the same siblings, and downloads each one.
        page2 = browser.new_page()
        with screenshot_on_failure(page2, artifacts_dir, "ui-node2"):
            page2.navigate(node2 + "/ui#bucket=photos&key=photo.bin")
            members_up(page2, 3)
            page2.wait_for(object_shown("photo.bin", 2))
            got = set()
            for index in range(2):
                page2.evaluate(
                    f"document.querySelectorAll('#object .sibling a.download')[{index}].click()"
                )
                got.add(browser.wait_download(downloads).read_bytes())
            assert got == {first, second}
            page2.screenshot(artifacts_dir / "ui-node2-siblings.png")
