"""The durable side of messaging, in one SQLite database per node (``node.data_dir/messaging.db``).

Why SQLite in WAL mode with ``synchronous=FULL`` rather than a hand-made append-only log: acks, dead letters,
retention and replay all change *several* rows at once (the delivery, the message's last reference, the dead
letter), and SQLite makes each batch one atomic, fsync'd transaction that survives ``kill -9`` and power loss;
WAL lets the reader connection page through the outbox while the writer commits. The cost of an fsync per commit
is paid once per batch: :mod:`sidecar.messaging.writer` groups every operation queued during a commit into the
next one (group commit). ``fsyncs`` and ``durable_messages`` count what that costs: one fsync per commit that
wrote, two per checkpoint (run here, not by SQLite's autocheckpoint, so that they are counted).

Tables
------
``messages``      the outbox: one row per published message that some stream still owes (seq grows forever)
``streams``       (topic, subscriber) → path, bulk size: subscriber is a service name or ``node:NAME`` (stream
                  readers); bulk > 0 delivers up to that many messages per POST
``deliveries``    (stream, seq): what each stream still owes; acked or dead-lettered rows are deleted, and a
                  message goes when its last delivery goes
``dead_letters``  copies of undeliverable messages with reason, attempts, last error
``topic_log``     messages received for this node's stream readers; ``id`` is the SSE event id
``local_subs``    subscriptions made on this node at run time (API or SSE), so they survive restarts
``inbox_marks``   per inbox stream (a publisher's stream received here for a local app), the publisher's last
                  sequence number stored: what arrives again at or below it is a duplicate
``meta``          ``epoch``: random, made with the database; a publisher's sequence numbers are unique per epoch

Every method runs on the thread of its connection: :class:`Store` methods prefixed ``w_`` on the writer
thread, ``r_`` on the reader thread. The in-memory accounting (``outbox``) belongs to the writer thread;
``pending`` and ``pending_bytes`` may be read from anywhere as a snapshot.
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.messaging.subscriptions import INBOX_PREFIX

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, topic TEXT NOT NULL, body BLOB NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, subscriber TEXT NOT NULL, path TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL, bulk INTEGER NOT NULL DEFAULT 0, UNIQUE (topic, subscriber));
CREATE TABLE IF NOT EXISTS deliveries (
    stream INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, topic TEXT NOT NULL, subscriber TEXT NOT NULL,
    path TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
    at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS topic_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, message_id TEXT NOT NULL, body BLOB NOT NULL,
    created_ms INTEGER NOT NULL, UNIQUE (topic, message_id));
CREATE INDEX IF NOT EXISTS topic_log_topic ON topic_log (topic, id);
CREATE TABLE IF NOT EXISTS local_subs (
    service TEXT NOT NULL, topic TEXT NOT NULL, path TEXT NOT NULL, bulk INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, topic));
CREATE TABLE IF NOT EXISTS inbox_marks (
    stream INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StreamRow:
    id: int
    topic: str
    subscriber: str
    path: str
    last_seen_ms: int
    bulk: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    message_id: str
    topic: str
    subscriber: str
    path: str
    body: bytes
    reason: str
    attempts: int
    last_error: str | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class Evicted:
    """A delivery dead-lettered by retention: the stream must skip ``seq``."""

    stream: int
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoreLimits:
    retention_age_ms: int
    retention_bytes: int
    max_dead_letters: int
    max_dead_letter_bytes: int = 64 << 20


# message bodies are the apps' data: the store is its owner's only, whatever the umask. SQLite gives the -wal and
# -shm files the database file's mode, so making the database 0600 before SQLite opens it covers all three; a
# data directory made here is 0700 (one that exists, such as a mounted volume, is left as it is)
DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private(data_dir: str, path: str) -> None:
    """Create ``data_dir`` (0700) and ``path`` (0600) if missing; tighten the database files that exist."""
    if not os.path.isdir(data_dir):
        os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
        os.chmod(data_dir, DIR_MODE)  # makedirs' mode is masked by the umask; chmod's is not
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing database from an older version may be 0644
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, FILE_MODE)


# checkpoints are run by the writer (not SQLite's autocheckpoint) so that their fsyncs are counted: one runs once
# the WAL has grown by about this many bytes since the last (SQLite's default is 1000 pages, 4 MB)
CHECKPOINT_BYTES = 4 << 20
_COMMIT_BYTES = 3 * 4096     # what a commit adds to the WAL besides the bodies: a few pages of rows and indexes


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # every commit is fsync'd: a 202 means on disk
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
    def __init__(self, data_dir: str, limits: StoreLimits) -> None:
        self.path = os.path.join(data_dir, "messaging.db")
        make_private(data_dir, self.path)
        self.limits = limits
        self.w = connect(self.path)
        self.w.executescript(SCHEMA)
        for table in ("streams", "local_subs"):  # a store made before bulk delivery
            if "bulk" not in {row[1] for row in self.w.execute(f"PRAGMA table_info({table})")}:
                self.w.execute(f"ALTER TABLE {table} ADD COLUMN bulk INTEGER NOT NULL DEFAULT 0")
        self.r = connect(self.path)
        found = self.w.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if found is None:
            self.epoch = os.urandom(6).hex()
            self.w.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = str(found[0])
        self.marks: dict[int, int] = {}   # writer thread: inbox stream → last publisher seq stored
        # writer thread: stream → its newest delivery written (a stream not here is looked up in the table): what a
        # worker must have read before it may take newer deliveries from memory (StreamWorker.preview)
        self.tails: dict[int, int] = {}
        # writer thread: what the commit being built runs in the event loop once it is on disk (after_commit)
        self.hooks: list[Callable[[], None]] = []
        # writer-thread state: seq → [references, size, created_ms], oldest first
        self.outbox: OrderedDict[int, list[int]] = OrderedDict()
        self.pending_bytes = 0
        self.dead_letter_count = 0
        self.dead_letter_bytes = 0      # bodies of the dead letters kept
        self.dead_letters_dropped = 0   # dead letters purged by the count or bytes bound, since start
        self.topic_streams: dict[str, list[int]] = {}   # topic → the streams a publish is written for
        self.stream_rows: dict[int, StreamRow] = {}
        self.in_flight: set[tuple[int, int]] = set()  # written by the event loop, read by retention
        self.log_bytes = 0
        # durability accounting (writer thread): fsyncs caused, messages made durable, since start
        self.fsyncs = 0
        self.durable_messages = 0
        self._tx_changes = 0        # total_changes when the transaction began
        self._tx_messages = 0       # messages the open transaction stores
        self._tx_bytes = 0
        self._wal_bytes = 0         # estimated WAL growth since the last checkpoint
        self._log_aged_ms: int | None = None   # when the topic log was last trimmed by age
        self._durable = True        # synchronous=FULL (connect's), or NORMAL for a settling-only transaction
        self.w.execute("PRAGMA wal_autocheckpoint=0")
        self._load()

    @property
    def pending(self) -> int:
        return len(self.outbox)

    def _load(self) -> None:
        refs = dict(self.w.execute("SELECT seq, count(*) FROM deliveries GROUP BY seq").fetchall())
        for seq, size, created in self.w.execute(
                "SELECT seq, length(body), created_ms FROM messages ORDER BY seq").fetchall():
            count = refs.get(seq, 0)
            if count == 0:  # cannot happen in one transaction; tidy up if a bug ever left one
                self.w.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                continue
            self.outbox[seq] = [count, size, created]
            self.pending_bytes += size
        for row in self.w.execute("SELECT id, topic, subscriber, path, last_seen_ms, bulk FROM streams").fetchall():
            self._remember_stream(StreamRow(*row))
        self.dead_letter_count, self.dead_letter_bytes = self.w.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM dead_letters").fetchone()
        self.log_bytes = self.w.execute("SELECT coalesce(sum(length(body)), 0) FROM topic_log").fetchone()[0]
        self.marks = dict(self.w.execute("SELECT stream, last_seq FROM inbox_marks").fetchall())

    def reload(self) -> None:
        """Rebuild the in-memory accounting from the tables (after a failed transaction rolled back)."""
        self.outbox.clear()
        self.pending_bytes = 0
        self.topic_streams.clear()
        self.stream_rows.clear()
        self.marks.clear()
        self.tails.clear()
        self.hooks.clear()
        self._load()

    def _remember_stream(self, row: StreamRow) -> None:
        self.stream_rows[row.id] = row
        # a publish is written for its topic's streams to services and nodes; an inbox stream holds only what its
        # publisher's stream hands it (w_inbox): written by a publish too, a local app would get each message twice
        if not row.subscriber.startswith(INBOX_PREFIX):
            self.topic_streams.setdefault(row.topic, []).append(row.id)

    def streams(self) -> list[StreamRow]:
        return list(self.stream_rows.values())

    def close(self) -> None:
        self.w.close()
        self.r.close()

    # ----------------------------------------------------------------------------- writer thread

    def begin(self, durable: bool = True) -> None:
        """Begin a transaction; ``durable=False`` for one that only settles deliveries (acks): it is committed
        without an fsync (``synchronous=NORMAL``; WAL keeps it consistent) and made durable by the next commit
        that fsyncs, or lost with power (never with a crash of the process) and then redelivered: at least once."""
        if durable != self._durable:
            self.w.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._durable = durable
        self.w.execute("BEGIN IMMEDIATE")
        self._tx_changes = self.w.total_changes
        self._tx_messages = self._tx_bytes = 0

    def commit(self) -> None:
        """Commit the transaction: with ``synchronous=FULL`` in WAL mode a commit that wrote fsyncs the WAL once
        (one that wrote nothing costs none); a checkpoint, when due, fsyncs the WAL and the database."""
        wrote = self.w.total_changes != self._tx_changes
        self.w.execute("COMMIT")
        if not wrote:
            return
        self.fsyncs += 1 if self._durable else 0
        self.durable_messages += self._tx_messages
        self._wal_bytes += self._tx_bytes + _COMMIT_BYTES
        if self._wal_bytes >= CHECKPOINT_BYTES:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: readers are not waited for)."""
        _, _, copied = self.w.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if copied > 0:
            self.fsyncs += 2
        self._wal_bytes = 0

    def rollback(self) -> None:
        if self.w.in_transaction:
            self.w.execute("ROLLBACK")

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in the event loop once the transaction being built is committed (never if it fails)."""
        self.hooks.append(hook)

    def _follow(self, stream: int, first: int, last: int) -> int:
        """The stream's newest delivery before ``first`` (0: none); ``last`` is its newest from now."""
        tail = self.tails.get(stream)
        if tail is None:
            tail = self.w_last_delivery(stream, below=first)
        self.tails[stream] = last
        return tail

    def w_publish(self, message_id: str, topic: str, body: bytes, created_ms: int
                  ) -> tuple[int, list[int], list[int]]:
        """Store a message for every stream of its topic; ``(seq, streams, tails)``, seq 0 when no stream wants
        it; ``tails``: each stream's newest delivery before this one."""
        seqs, offers = self.w_publish_many([(message_id, topic, body, created_ms)])
        return seqs[0], list(offers), [tail for tail, _ in offers.values()]

    def w_publish_many(self, items: list[tuple[str, str, bytes, int]]
                       ) -> tuple[list[int], dict[int, tuple[int, list[tuple[int, bytes]]]]]:
        """Store messages ``(id, topic, body, created_ms)``, in order, each for every stream of its topic, in two
        statements for the lot (seqs are given here, above every seq the table ever had, as AUTOINCREMENT would).
        Each message's seq (0: no stream wants it), and per stream ``(its newest delivery before these, the
        deliveries written: (seq, body) ascending)``."""
        seqs: list[int] = []
        rows: list[tuple[int, str, str, bytes, int]] = []
        deliveries: list[tuple[int, int]] = []
        offers: dict[int, tuple[int, list[tuple[int, bytes]]]] = {}
        topic_streams, outbox = self.topic_streams, self.outbox
        seq = -1
        size = 0
        for message_id, topic, body, created_ms in items:
            streams = topic_streams.get(topic)
            if not streams:
                seqs.append(0)
                continue
            if seq < 0:
                found = self.w.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
                seq = int(found[0]) if found is not None else 0
            seq += 1
            seqs.append(seq)
            rows.append((seq, message_id, topic, body, created_ms))
            size += len(body)
            for stream in streams:
                deliveries.append((stream, seq))
                offer = offers.get(stream)
                if offer is None:
                    offers[stream] = (0, [(seq, body)])
                else:
                    offer[1].append((seq, body))
        if not rows:
            return seqs, offers
        self.w.executemany("INSERT INTO messages (seq, id, topic, body, created_ms) VALUES (?, ?, ?, ?, ?)", rows)
        self.w.executemany("INSERT INTO deliveries (stream, seq) VALUES (?, ?)", deliveries)
        for seq, _, topic, body, created_ms in rows:   # once written: a failed statement leaves no accounting
            outbox[seq] = [len(topic_streams[topic]), len(body), created_ms]
        self.pending_bytes += size
        self._tx_messages += len(rows)
        self._tx_bytes += size
        for stream, (_, written) in offers.items():
            offers[stream] = (self._follow(stream, written[0][0], written[-1][0]), written)
        return seqs, offers

    def w_inbox(self, stream: int, items: list[tuple[int, str, bytes]], created_ms: int
                ) -> tuple[list[tuple[int, bytes]], int, int]:
        """Store a publisher's batch for one of this node's inbox streams, in order: ``items`` are (the
        publisher's seq, message id, body), ascending; those at or below the stream's mark are duplicates
        (stored before, the ack lost). ``(stored as (delivery seq, body), duplicates, the stream's newest delivery
        before them)``."""
        mark = self.marks.get(stream, 0)
        fresh = [item for item in items if item[0] > mark]
        stored: list[tuple[int, bytes]] = []
        for _, message_id, body in fresh:
            cur = self.w.execute("INSERT INTO messages (id, topic, body, created_ms) VALUES (?, ?, ?, ?)",
                                 (message_id, self.stream_rows[stream].topic, body, created_ms))
            seq = int(cur.lastrowid or 0)
            self.w.execute("INSERT INTO deliveries (stream, seq) VALUES (?, ?)", (stream, seq))
            stored.append((seq, body))
            self.outbox[seq] = [1, len(body), created_ms]
            self.pending_bytes += len(body)
            self._tx_messages += 1
            self._tx_bytes += len(body)
        tail = 0
        if fresh:
            self.marks[stream] = fresh[-1][0]
            self.w.execute("INSERT OR REPLACE INTO inbox_marks (stream, last_seq) VALUES (?, ?)",
                           (stream, fresh[-1][0]))
            tail = self._follow(stream, stored[0][0], stored[-1][0])
        return stored, len(items) - len(fresh), tail

    def w_last_delivery(self, stream: int, below: int) -> int:
        """The stream's newest delivery below ``below`` (0: none), as the writer's transaction sees it."""
        found = self.w.execute("SELECT max(seq) FROM deliveries WHERE stream = ? AND seq < ?", (stream, below))
        return int(found.fetchone()[0] or 0)

    def w_settle(self, stream: int, seq: int) -> bool:
        """Remove one delivery (acked or dead-lettered); False when it was not there (already settled)."""
        return self.w_settle_many(stream, [seq]) == 1

    def w_settle_many(self, stream: int, seqs: list[int]) -> int:
        """Remove a stream's deliveries ``seqs`` (acked), and the messages no other stream still owes, a few
        statements for the lot; how many were there (a delivery settled before is skipped)."""
        settled = 0
        for start in range(0, len(seqs), _SQL_LIST):
            chunk = seqs[start:start + _SQL_LIST]
            marks = ",".join("?" * len(chunk))
            gone: list[int] = []
            for (seq,) in self.w.execute(f"DELETE FROM deliveries WHERE stream = ? AND seq IN ({marks}) RETURNING seq",
                                         (stream, *chunk)).fetchall():
                settled += 1
                entry = self.outbox.get(seq)
                if entry is not None:
                    entry[0] -= 1
                    if entry[0] <= 0:
                        gone.append(seq)
                        del self.outbox[seq]
                        self.pending_bytes -= entry[1]
            if gone:
                self.w.execute(f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(gone))})", gone)
        return settled

    def w_dead_letter(self, stream: int, seq: int, reason: str, attempts: int, last_error: str | None,
                      at_ms: int) -> bool:
        row = self.stream_rows.get(stream)
        found = self.w.execute("SELECT id, topic, body FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None or found is None or not self.w_settle(stream, seq):
            return False
        self.w.execute(
            "INSERT INTO dead_letters (message_id, topic, subscriber, path, body, reason, attempts, last_error, at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (found[0], found[1], row.subscriber, row.path, found[2], reason, attempts, last_error, at_ms))
        self.dead_letter_count += 1
        self.dead_letter_bytes += len(found[2])
        return True

    def w_ensure_stream(self, topic: str, subscriber: str, path: str, seen_ms: int, bulk: int | None = None
                        ) -> tuple[StreamRow, bool]:
        """The stream of (topic, subscriber), created if new; its path, bulk size (None: kept) and last-seen time
        refreshed."""
        found = self.w.execute("SELECT id, bulk FROM streams WHERE topic = ? AND subscriber = ?",
                               (topic, subscriber)).fetchone()
        if found is None:
            cur = self.w.execute(
                "INSERT INTO streams (topic, subscriber, path, last_seen_ms, bulk) VALUES (?, ?, ?, ?, ?)",
                (topic, subscriber, path, seen_ms, bulk or 0))
            row = StreamRow(int(cur.lastrowid or 0), topic, subscriber, path, seen_ms, bulk or 0)
            self._remember_stream(row)
            return row, True
        bulk = found[1] if bulk is None else bulk
        self.w.execute("UPDATE streams SET path = ?, last_seen_ms = ?, bulk = ? WHERE id = ?",
                       (path, seen_ms, bulk, found[0]))
        row = StreamRow(found[0], topic, subscriber, path, seen_ms, bulk)
        self.stream_rows[row.id] = row
        return row, False

    def w_forget_stream(self, stream: int, at_ms: int) -> int:
        """A subscription gone for longer than retention: what it still owed is dead-lettered; the count."""
        seqs = [s for (s,) in self.w.execute("SELECT seq FROM deliveries WHERE stream = ? ORDER BY seq", (stream,))]
        for seq in seqs:
            self.w_dead_letter(stream, seq, "unsubscribed", 0, "the subscription disappeared", at_ms)
        row = self.stream_rows.pop(stream, None)
        if row is not None:
            self.topic_streams[row.topic] = [s for s in self.topic_streams.get(row.topic, []) if s != stream]
        self.w.execute("DELETE FROM streams WHERE id = ?", (stream,))
        self.w.execute("DELETE FROM inbox_marks WHERE stream = ?", (stream,))
        self.marks.pop(stream, None)
        self.tails.pop(stream, None)
        return len(seqs)

    def w_enforce_retention(self, now_ms: int) -> list[Evicted]:
        """Dead-letter the oldest deliveries while the outbox is over its age or bytes bound (never one in
        flight: then eviction stops until the next commit)."""
        evicted: list[Evicted] = []
        oldest_allowed = now_ms - self.limits.retention_age_ms
        while self.outbox:
            seq, (_, _, created) = next(iter(self.outbox.items()))
            if self.pending_bytes > self.limits.retention_bytes:
                reason = "retention-bytes"
            elif created < oldest_allowed:
                reason = "retention-age"
            else:
                break
            streams = [s for (s,) in self.w.execute("SELECT stream FROM deliveries WHERE seq = ?", (seq,))]
            if any((s, seq) in self.in_flight for s in streams):
                break
            for stream in streams:
                self.w_dead_letter(stream, seq, reason, 0, f"outbox over its {reason.split('-')[1]} bound", now_ms)
                evicted.append(Evicted(stream, seq, reason))
            leftover = self.outbox.pop(seq, None)  # references without deliveries: a bug; never loop on it
            if leftover is not None:
                self.pending_bytes -= leftover[1]
                self.w.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        self._cap_dead_letters()
        self._trim_log(now_ms)
        return evicted

    def _cap_dead_letters(self) -> None:
        """Purge the oldest dead letters while over the count or the bytes bound."""
        over = self.dead_letter_count - self.limits.max_dead_letters
        excess = self.dead_letter_bytes - self.limits.max_dead_letter_bytes
        dropped = freed = cut = 0
        while dropped < over or freed < excess:
            page = self.w.execute("SELECT id, length(body) FROM dead_letters WHERE id > ? ORDER BY id LIMIT 256",
                                  (cut,)).fetchall()
            if not page:
                break
            for row_id, size in page:
                if dropped >= over and freed >= excess:
                    break
                dropped += 1
                freed += size
                cut = row_id
        if dropped:
            self.w.execute("DELETE FROM dead_letters WHERE id <= ?", (cut,))
            self.dead_letter_count -= dropped
            self.dead_letter_bytes -= freed
            self.dead_letters_dropped += dropped

    def _trim_log(self, now_ms: int) -> None:
        if self.log_bytes > self.limits.retention_bytes:
            # drop the oldest tenth at a time: a DELETE per event would cost more than it saves
            rows = self.w.execute("SELECT id, length(body) FROM topic_log ORDER BY id LIMIT "
                                  "max(1, (SELECT count(*) FROM topic_log) / 10)").fetchall()
            if rows:
                self.w.execute("DELETE FROM topic_log WHERE id <= ?", (rows[-1][0],))
                self.log_bytes -= sum(size for _, size in rows)
        # by age at most once a second, and only when the oldest event (the lowest id) is old enough: the
        # DELETE reads the whole log, which a commit a millisecond should not pay for
        if self._log_aged_ms is not None and 0 <= now_ms - self._log_aged_ms < _LOG_AGE_EVERY_MS:
            return
        self._log_aged_ms = now_ms
        cutoff = now_ms - self.limits.retention_age_ms
        oldest = self.w.execute("SELECT created_ms FROM topic_log ORDER BY id LIMIT 1").fetchone()
        if oldest is not None and oldest[0] < cutoff:
            self.log_bytes -= sum(size for (size,) in self.w.execute(
                "DELETE FROM topic_log WHERE created_ms < ? RETURNING length(body)", (cutoff,)).fetchall())

    def w_append_log(self, topic: str, message_id: str, body: bytes, created_ms: int) -> int | None:
        """Keep a message for this node's stream readers; its event id, None when it was already there."""
        cur = self.w.execute(
            "INSERT OR IGNORE INTO topic_log (topic, message_id, body, created_ms) VALUES (?, ?, ?, ?)",
            (topic, message_id, body, created_ms))
        if cur.rowcount == 0:
            return None
        self.log_bytes += len(body)
        self._tx_messages += 1
        self._tx_bytes += len(body)
        return int(cur.lastrowid or 0)

    def w_local_sub(self, service: str, topic: str, path: str, bulk: int = 0) -> None:
        self.w.execute("INSERT OR REPLACE INTO local_subs (service, topic, path, bulk) VALUES (?, ?, ?, ?)",
                       (service, topic, path, bulk))

    def w_remove_local_sub(self, service: str, topic: str) -> None:
        self.w.execute("DELETE FROM local_subs WHERE service = ? AND topic = ?", (service, topic))

    def w_replay(self, ids: list[int] | None, now_ms: int) -> list[tuple[int, int]]:
        """Dead letters back into their streams as new messages; the (stream, seq) queued."""
        rows = self._dead_rows(ids)
        queued = []
        for row in rows:
            stream, _ = self.w_ensure_stream(row.topic, row.subscriber, row.path, now_ms)
            cur = self.w.execute("INSERT INTO messages (id, topic, body, created_ms) VALUES (?, ?, ?, ?)",
                                 (row.message_id, row.topic, row.body, now_ms))
            seq = int(cur.lastrowid or 0)
            self.w.execute("INSERT INTO deliveries (stream, seq) VALUES (?, ?)", (stream.id, seq))
            self.tails[stream.id] = seq   # a preview after this must follow it too
            self.outbox[seq] = [1, len(row.body), now_ms]
            self.pending_bytes += len(row.body)
            self.w.execute("DELETE FROM dead_letters WHERE id = ?", (row.id,))
            self.dead_letter_count -= 1
            self.dead_letter_bytes -= len(row.body)
            queued.append((stream.id, seq))
        return queued

    def w_purge(self, ids: list[int] | None) -> int:
        if ids is None:
            count = int(self.w.execute("DELETE FROM dead_letters").rowcount)
        else:
            count = sum(int(self.w.execute("DELETE FROM dead_letters WHERE id = ?", (i,)).rowcount) for i in ids)
        self.dead_letter_count -= count
        self.dead_letter_bytes = self.w.execute("SELECT coalesce(sum(length(body)), 0) FROM dead_letters").fetchone()[0]
        return count

    def _dead_rows(self, ids: list[int] | None) -> list[DeadLetterRow]:
        if ids is None:
            rows = self.w.execute(f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY id").fetchall()
        else:
            rows = [r for i in ids for r in self.w.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (i,)).fetchall()]
        return [DeadLetterRow(*r) for r in rows]

    # ----------------------------------------------------------------------------- reader thread

    def r_page(self, stream: int, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(int(s), bytes(b)) for s, b in self.r.execute(
            "SELECT d.seq, m.body FROM deliveries d JOIN messages m ON m.seq = d.seq "
            "WHERE d.stream = ? AND d.seq > ? ORDER BY d.seq LIMIT ?", (stream, after, limit))]

    def r_log(self, topic: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(int(i), bytes(b)) for i, b in self.r.execute(
            "SELECT id, body FROM topic_log WHERE topic = ? AND id > ? ORDER BY id LIMIT ?", (topic, after, limit))]

    def r_log_head(self, topic: str) -> tuple[int, int]:
        """(oldest id kept - 1, newest id) of a topic's log; (0, 0) when empty."""
        low, high = self.r.execute("SELECT min(id), max(id) FROM topic_log WHERE topic = ?", (topic,)).fetchone()
        return (int(low) - 1 if low is not None else 0), int(high or 0)

    def r_last_log_id(self) -> int:
        found = self.r.execute("SELECT seq FROM sqlite_sequence WHERE name = 'topic_log'").fetchone()
        return int(found[0]) if found else 0

    def r_dead_letters(self, limit: int, after: int, topic: str | None) -> list[DeadLetterRow]:
        sql = f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id > ?"
        args: list[Any] = [after]
        if topic is not None:
            sql += " AND topic = ?"
            args.append(topic)
        return [DeadLetterRow(*r) for r in self.r.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]

    def r_local_subs(self) -> list[tuple[str, str, str, int]]:
        return [(str(a), str(b), str(c), int(d)) for a, b, c, d in self.r.execute(
            "SELECT service, topic, path, bulk FROM local_subs ORDER BY service, topic")]


_LOG_AGE_EVERY_MS = 1000
_SQL_LIST = 500   # values in one statement's IN (...) list (SQLite allows 32766 variables)
_DEAD_COLUMNS = "id, message_id, topic, subscriber, path, body, reason, attempts, last_error, at_ms"


def stream_ids(rows: Iterable[StreamRow]) -> dict[tuple[str, str], int]:
    return {(r.topic, r.subscriber): r.id for r in rows}
