"""What every world shares: parameters, the cluster and its nodes, log.

The generated bindings (``wit_world``, made by componentize-py from the
WIT) exist only inside a component build, so they are imported where they
are used, never at the top of a module: the build tool imports a policy on
the build machine to find its world.
"""

from __future__ import annotations

import math
import struct  # imported here: componentize-py keeps what is imported at build time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


class ParamError(ValueError):
    """A parameter that is present but malformed, or required and missing."""

    def __init__(self, key: str, value: Optional[str], expected: str):
        self.key, self.value, self.expected = key, value, expected
        if value is None:
            text = f"policy parameter `{key}` is missing: set it to {expected} in the policy's params"
        else:
            text = f"policy parameter `{key}` = {value!r} is not {expected}"
        super().__init__(text)


class Params:
    """The policy's parameters (``[policies.<phase>.params]``), all text."""

    def __init__(self, pairs: List[Tuple[str, str]]):
        self._pairs = list(pairs)

    def get(self, key: str) -> Optional[str]:
        """The value of ``key``, or None."""
        for k, v in self._pairs:
            if k == key:
                return v
        return None

    def items(self) -> List[Tuple[str, str]]:
        """Every (key, value), in the order given."""
        return list(self._pairs)

    def str_or(self, key: str, default: str) -> str:
        value = self.get(key)
        return default if value is None else value

    def required(self, key: str, what: str) -> str:
        """``key``'s value; ParamError naming ``what`` when absent or empty."""
        value = self.get(key)
        if value is None or not value.strip():
            raise ParamError(key, None, what)
        return value

    def int_or(self, key: str, default: int) -> int:
        """``key`` as an unsigned integer (0 ... 2**32-1), ``default`` when absent."""
        value = self.get(key)
        if value is None:
            return default
        text = value.strip()
        if not text.isdigit() or int(text) > 0xFFFFFFFF:
            raise ParamError(key, value, "an unsigned integer")
        return int(text)

    def float_or(self, key: str, default: float) -> float:
        """``key`` as a finite number (NaN and infinities refused)."""
        value = self.get(key)
        if value is None:
            return default
        try:
            number = float(value.strip())
        except ValueError:
            raise ParamError(key, value, "a finite number") from None
        if not math.isfinite(number):
            raise ParamError(key, value, "a finite number")
        return number

    def bool_or(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        text = value.strip()
        if text in ("true", "false"):
            return text == "true"
        raise ParamError(key, value, "true or false")


def log(level: str, message: str, **fields: str) -> None:
    """Writes to the orchestrator's log: level is trace, debug, info, warn
    or error; ``fields`` are key/value pairs (strings)."""
    from wit_world.imports import log as wit_log
    from wit_world.imports import types

    levels = {
        "trace": wit_log.Level.TRACE,
        "debug": wit_log.Level.DEBUG,
        "info": wit_log.Level.INFO,
        "warn": wit_log.Level.WARN,
        "error": wit_log.Level.ERROR,
    }
    pairs = [types.KeyValue(key=k, value=str(v)) for k, v in fields.items()]
    wit_log.log(levels.get(level, wit_log.Level.INFO), message, pairs)


@dataclass(frozen=True)
class Totals:
    """Count and totals of the nodes a query matched."""

    count: int
    cpu: float
    gpu: float
    memory_bytes: int
    names: List[str] = field(default_factory=list)


_HEALTH = ["unknown", "healthy", "degraded", "unhealthy", "stale", "pending"]
_FLOAT = struct.Struct("<d")
_WORD = struct.Struct("<Q")


class _Table:
    """The packed node table (see ``node-table`` in the WIT), read in place."""

    __slots__ = ("text", "words", "labels", "resources", "stride")

    def __init__(self, table):
        self.text = table.text.encode("utf-8")
        self.words = table.nodes
        self.labels = table.labels
        self.resources = table.resources
        self.stride = max(table.words_per_node, 13)

    def string(self, word: int) -> str:
        start = word >> 32
        return self.text[start:start + (word & 0xFFFFFFFF)].decode("utf-8", "replace")

    def same(self, word: int, expected: bytes) -> bool:
        start = word >> 32
        return self.text[start:start + (word & 0xFFFFFFFF)] == expected

    def rows(self, words, word: int):
        start, length = word >> 32, word & 0xFFFFFFFF
        return words[2 * start:2 * (start + length)]


def _number(word: int) -> float:
    return _FLOAT.unpack(_WORD.pack(word))[0]


class Node:
    """One node the GCS knows (dead ones included): a view into the table,
    decoded on access."""

    __slots__ = ("_t", "_i")

    def __init__(self, table: _Table, index: int):
        self._t, self._i = table, index

    def _w(self, n: int) -> int:
        return self._t.words[self._i + n]

    @property
    def id(self) -> str:
        return self._t.string(self._w(0))

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def address(self) -> str:
        return self._t.string(self._w(1))

    @property
    def hostname(self) -> str:
        return self._t.string(self._w(2))

    @property
    def name(self) -> str:
        """The hostname (the pod name), or the address without one."""
        return self.hostname or self.address

    @property
    def is_head(self) -> bool:
        return bool(self._w(3) & 1)

    @property
    def alive(self) -> bool:
        return bool(self._w(3) & 2)

    @property
    def serving(self) -> bool:
        """The serving process was launched with this node alive (health)."""
        return bool(self._w(3) & 4)

    @property
    def cpu(self) -> float:
        return _number(self._w(4))

    @property
    def gpu(self) -> float:
        return _number(self._w(5))

    @property
    def memory_bytes(self) -> int:
        return self._w(6)

    @property
    def object_store_memory_bytes(self) -> int:
        return self._w(7)

    @property
    def start_time_ms(self) -> int:
        return self._w(8)

    def label(self, key: str):
        """The value of label ``key``, or None."""
        wanted = key.encode("utf-8")
        rows = self._t.rows(self._t.labels, self._w(9))
        for i in range(0, len(rows) - 1, 2):
            if self._t.same(rows[i], wanted):
                return self._t.string(rows[i + 1])
        return None

    @property
    def labels(self) -> Dict[str, str]:
        rows = self._t.rows(self._t.labels, self._w(9))
        return {self._t.string(rows[i]): self._t.string(rows[i + 1])
                for i in range(0, len(rows) - 1, 2)}

    @property
    def resources(self) -> Dict[str, float]:
        """Custom resources (anything but CPU, GPU and memory)."""
        rows = self._t.rows(self._t.resources, self._w(10))
        return {self._t.string(rows[i]): _number(rows[i + 1])
                for i in range(0, len(rows) - 1, 2)}

    @property
    def health(self) -> str:
        """unknown, healthy, degraded, unhealthy, stale or pending."""
        state = self._w(11)
        return _HEALTH[state] if state < len(_HEALTH) else "unknown"

    @property
    def health_reason(self) -> str:
        return self._t.string(self._w(12))

    @property
    def usable(self) -> bool:
        """May count: not unhealthy and not pending its first health report."""
        return self.health not in ("unhealthy", "pending")

    def __repr__(self) -> str:
        return f"Node({self.name!r}, alive={self.alive}, gpu={self.gpu})"


def _decode_nodes(table) -> List[Node]:
    t = _Table(table)
    return [Node(t, i) for i in range(0, len(t.words) - t.stride + 1, t.stride)]


class Cluster:
    """The cluster as the orchestrator saw it when it called the policy.
    Counts and totals are answered by the host without copying a node;
    ``nodes()`` fetches the whole table once."""

    def __init__(self, handle):
        self._handle = handle
        self._nodes: Optional[List[Node]] = None
        self._expected = None
        self._timing = None

    @property
    def expected(self):
        """The cluster asked for: ``nodes``, ``gpus``, ``min_gpus_per_node``,
        ``groups`` (each ``name``, ``replicas``, ``cpus_per_node``,
        ``gpus_per_node``)."""
        if self._expected is None:
            self._expected = self._handle.expected()
        return self._expected

    def _timings(self):
        if self._timing is None:
            self._timing = self._handle.timing()
        return self._timing

    @property
    def elapsed_ms(self) -> int:
        return self._timings().elapsed_ms

    @property
    def deadline_ms(self) -> int:
        """The phase's deadline from its start; 0 means none."""
        return self._timings().deadline_ms

    @property
    def deadline_passed(self) -> bool:
        return self._timings().left_ms == 0

    def diagnostics(self) -> List[str]:
        """Facts the host gathered (Pending pods and why, ...)."""
        return list(self._handle.diagnostics())

    @staticmethod
    def _filter(alive=None, is_head=None, label=None, gpus_below=None,
                gpus_at_least=None, usable=None):
        from wit_world.imports import types

        pair = None
        if label is not None:
            key, value = label
            pair = types.KeyValue(key=key, value=value)
        return types.NodeFilter(alive=alive, is_head=is_head, label=pair,
                                gpus_below=gpus_below, gpus_at_least=gpus_at_least,
                                usable=usable)

    def totals(self, names: int = 0, **conditions) -> Totals:
        """Count and totals of the nodes matching every condition given:
        ``alive``, ``is_head``, ``label=(key, value)``, ``gpus_below``,
        ``gpus_at_least``, ``usable``; with the names of at most ``names``."""
        t = self._handle.totals(self._filter(**conditions), names)
        return _totals(t)

    def count(self, **conditions) -> int:
        """How many nodes match (see ``totals``)."""
        return self.totals(**conditions).count

    def totals_by_label(self, key: str, **conditions) -> List[Tuple[str, Totals]]:
        """Totals grouped by the value of label ``key``, sorted by value."""
        groups = self._handle.totals_by_label(key, self._filter(**conditions))
        return [(g.value, _totals(g.totals)) for g in groups]

    def nodes(self) -> List[Node]:
        """Every node the GCS knows, dead ones included, head first."""
        if self._nodes is None:
            self._nodes = _decode_nodes(self._handle.nodes())
        return self._nodes


def _totals(t) -> Totals:
    return Totals(count=t.count, cpu=t.cpus, gpu=t.gpus,
                  memory_bytes=t.memory_bytes, names=list(t.names))


def _params(pairs) -> Params:
    return Params([(kv.key, kv.value) for kv in pairs])
