"""Bucket properties as a node keeps them: in its storage's meta map, decoded once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ringstore.core.props import BucketProps

PROPS_MEMO_ENTRIES = 1024  # distinct bucket props kept decoded; more buckets than this is rare


class PropsStore:
    """Bucket properties: kept in the local meta map, pushed to every node on change."""

    def __init__(
        self,
        load: Callable[[str], Awaitable[bytes | None]],
        save: Callable[[str, bytes], Awaitable[None]],
        default: BucketProps,
    ) -> None:
        self._load = load
        self._save = save
        self.default = default
        # Decoded props by their stored bytes: every request reads its bucket's props, and
        # keyed by content the memo can never be stale, whoever changed the stored props.
        self._decoded: dict[bytes, BucketProps] = {}

    async def get(self, bucket: bytes) -> BucketProps:
        raw = await self._load(_props_name(bucket))
        if not raw:
            return self.default
        props = self._decoded.get(raw)
        if props is None:
            props = BucketProps.decode(raw)
            if len(self._decoded) >= PROPS_MEMO_ENTRIES:
                self._decoded.clear()
            self._decoded[raw] = props
        return props

    async def put(self, bucket: bytes, props: BucketProps | None) -> None:
        await self._save(_props_name(bucket), b"" if props is None else props.encode())


def _props_name(bucket: bytes) -> str:
    return "props:" + bucket.hex()
