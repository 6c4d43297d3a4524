"""kombu's Redis transport, with every take from a queue one atomic step on the server.

kombu emulates acknowledgements on Redis: each unacknowledged message waits in the ``unacked``
hash (delivery tag -> [payload, exchange, routing key]) and the ``unacked_index`` sorted set
(delivery tag -> when taken); ``basic_ack`` removes both, and the visibility-timeout restore
moves what is left back to its queue. But kombu's consumer takes a message with ``BRPOP`` and
records it unacknowledged in a second round trip, and holds a ``BRPOP`` reply unread while the
worker has no room for it: a worker killed in between (or a broker restarting) loses the
message. Here the consumer only waits on the queue (``BLMOVE`` of a list onto itself returns
its tail and leaves it there), then takes and records in one script.

Workers use this transport for ``redis://`` and ``rediss://`` unless the project sets Celery's
``broker_transport`` itself (``consume_atomically``). It needs Redis 6.2 or later (``BLMOVE``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from time import monotonic
from typing import Any

from kombu.serialization import prepare_accept_content
from kombu.transport import TRANSPORT_ALIASES, _transport_cache, redis, virtual
from redis.exceptions import OutOfMemoryError

from . import messages
from .messages import Taking, came_back

logger = logging.getLogger(__name__)

TRANSPORT = "django_cio.broker.redis:Transport"

# KEYS: unacked, unacked_index, then the lists to take from, in order.
# ARGV: most messages, the time taken (kombu's clock: the client's).
# Returns {position of its list among those taken from (from 1), payload} for each message;
# the position negated for an item that is not a kombu message (taken out of the way, not
# recorded).
TAKE = """
local taken = {}
local limit = tonumber(ARGV[1])
for i = 3, #KEYS do
  while #taken < limit do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, payload = pcall(cjson.decode, item)
    local props = ok and type(payload) == 'table' and payload['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) == 'string' then
      local info = props['delivery_info']
      if type(info) ~= 'table' then info = {} end
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
                 .. ',' .. cjson.encode(info['routing_key']) .. ']')
      taken[#taken + 1] = {i - 2, item}
    else
      taken[#taken + 1] = {2 - i, item}
    end
  end
end
return taken
"""


def on_redis(channel: Any) -> bool:
    """Whether a kombu channel is on Redis (kombu's Redis channel, or this module's)."""
    return isinstance(channel, redis.Channel)


def queue_lists(channel: Any, queues: list[str]) -> dict[str, str]:
    """Each list holding ``queues``' messages -> its queue, in kombu's order of taking."""
    return {channel._q_for_pri(queue, step): queue
            for step in channel.priority_steps for queue in queues}


def prefixed(channel: Any, keys: list[str]) -> list[str]:
    """``keys`` with kombu's global key prefix (kombu adds it only to the commands it knows)."""
    prefix = channel.global_keyprefix or ""
    return [prefix + key for key in keys]


def take(channel: Any, queues: list[str], limit: int) -> list[tuple[str, bytes]]:
    """Up to ``limit`` (queue, payload) from ``queues``, each recorded unacknowledged as it is
    taken, in one script."""
    lists = queue_lists(channel, queues)
    keys = prefixed(channel, [channel.unacked_key, channel.unacked_index_key, *lists])
    with channel.conn_or_acquire() as client:
        pairs = client.eval(TAKE, len(keys), *keys, limit, time.time())
    taken = []
    queue_of = list(lists.values())
    for position, item in pairs:
        if position > 0:
            taken.append((queue_of[position - 1], item))
        else:  # kombu's own consumer fails on it the same way
            logger.error("Dropped an item of %d bytes from queue %s: not a kombu message.",
                         len(item), queue_of[-position - 1])
    return taken


class QoS(redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.recorded:  # by ``take``: only kombu's memory is left
            self.channel.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded: set[str] = set()  # taken and recorded, not yet through ``QoS.append``
        self.no_ack_queues: set[str] = set()  # consumed without acknowledgements: nothing to record
        self.more = False  # the last read took a message: look again before waiting
        self.waiting_with = "BLMOVE"
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        (self.no_ack_queues.add if no_ack else self.no_ack_queues.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Wait for the first active queue (in kombu's fair cycle) to hold a message; after a
        read that took one, only a round trip (the backlog may be in any queue or priority)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self.more:
            command: tuple[Any, ...] = ("PING",)
        else:
            key, = prefixed(self, [self._q_for_pri(queues[0], 0)])
            timeout = self.brpop_timeout if timeout is None else timeout
            # Never for ever: the other lists are looked at when the wait ends.
            command = ("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 1)
        self.waiting_with = command[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu: None until sent
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        """The wait is over (a message, or the timeout): take one message, if there is one,
        from every active queue. One at a time, as kombu's ``BRPOP``: the worker decides
        between two reads whether it has room for another (``worker_disable_prefetch``)."""
        try:
            self.client.parse_response(self.client.connection, self.waiting_with, **options)
        except OutOfMemoryError:  # a full Redis refuses BLMOVE (a write), not the take
            pass
        except self.connection_errors:
            self.client.connection.disconnect()  # the next poll reconnects
            raise
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            self._flush_brpop_reauth()
        taken = self._take_one(self._queue_cycle.consume(len(self.active_queues)))
        self.more = taken is not None
        if taken is None:
            raise redis.Empty()
        queue, payload = taken
        self._queue_cycle.rotate(queue)
        self.connection._deliver(payload, queue)
        return True

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if no_ack:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        with self.conn_or_acquire() as client:
            self._maybe_update_queues_expire(client, queue)
        taken = self._take_one([queue])
        if taken is None:
            return None
        message = self.Message(taken[1], channel=self)
        self.qos.append(message, message.delivery_tag)
        return message

    def _take_one(self, queues: list[str]) -> tuple[str, dict[str, Any]] | None:
        acknowledged = [queue for queue in queues if queue not in self.no_ack_queues]
        taken = take(self, acknowledged, 1) if acknowledged else []
        if taken:
            queue, item = taken[0]
            payload = json.loads(item)
            self.recorded.add(payload["properties"]["delivery_tag"])
            return queue, payload
        for queue in queues:
            if queue in self.no_ack_queues:  # kombu's own take: no acknowledgement to lose
                with contextlib.suppress(redis.Empty):
                    return queue, self._get(queue)
        return None


class Transport(redis.Transport):
    Channel = Channel


def consume_atomically(sender: Any, **kwargs: Any) -> None:
    """``worker_init`` receiver: this worker's ``redis://`` and ``rediss://`` connections (a
    failover's too) use ``Transport``, unless the project chose Celery's ``broker_transport``."""
    if sender.app.conf.broker_transport:
        return
    for scheme in ("redis", "rediss"):  # the alias, not the URL: kombu keys TLS on "rediss"
        TRANSPORT_ALIASES[scheme] = TRANSPORT
        _transport_cache.pop(scheme, None)  # kombu's cache of resolved aliases
    logger.info("Redis connections use %s (each take recorded atomically).", TRANSPORT)



# -- the drain's side: ``deliver`` messages taken many at a time, handed back, acknowledged ---

def drain(taking: Taking) -> None:
    """Take what fits, a script a step, until the queue is empty or something cannot run."""
    while not taking.full() and _keep(taking, _take_messages(taking.bound,
                                                             taking.next_take())):
        pass


def _keep(taking: Taking, taken: list[Any]) -> bool:
    """Keep what fits of ``taken``; False when the drain must stop."""
    more = bool(taken)
    for index, queued in enumerate(taken):
        if taking.full():  # more than fits: back to the head of the queue, unchanged
            give_back(taking.bound, taken[index:], front=True)
            return False
        message = None if came_back(queued) else messages.as_message(queued)
        if message is None:
            # Back from a lost worker, Celery runs it alone (a poison message is counted
            # and dead-lettered alone); a retry must wait for its countdown.
            give_back(taking.bound, [queued], front=False)  # as it was, redelivered or not
            more = False
            continue
        taking.add(message)
    return more


# KEYS: unacked, unacked_index, the queue's lists. ARGV: LPUSH (to the back) or RPUSH (to the
# front), then (delivery tag, KEYS index of its list, payload) for each message. A message
# the visibility timeout already restored is not in ``unacked`` any more: left alone.
_GIVE_BACK = """
for i = 2, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call(ARGV[1], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
end
"""


def _drain_keys(channel: Any, queue: str) -> list[str]:
    """unacked, unacked_index and the queue's lists, as ``_GIVE_BACK`` takes them."""
    lists = queue_lists(channel, [queue])
    return prefixed(channel, [channel.unacked_key, channel.unacked_index_key, *lists])


def _take_messages(bound: Any, limit: int) -> list[Any]:
    """Up to ``limit`` messages, each recorded unacknowledged as it is taken (one script)."""
    channel = bound.channel
    return [_received(channel, item) for _, item in take(channel, [bound.name], limit)]


def _received(channel: Any, item: bytes) -> Any:
    """A taken message as ``basic_get`` makes it, already recorded unacknowledged."""
    message = channel.Message(json.loads(item), channel=channel)
    # kombu's in-memory record only: what a closing connection restores, what ack clears.
    virtual.QoS.append(channel.qos, message, message.delivery_tag)
    message.accept = prepare_accept_content(["json"])
    return message


def give_back(bound: Any, taken: list[Any], front: bool) -> None:
    """Return taken messages to the queue unchanged, at its front (in their order) or back."""
    channel = bound.channel
    keys = _drain_keys(channel, bound.name)
    args: list[Any] = ["RPUSH" if front else "LPUSH"]
    for queued in reversed(taken) if front else taken:
        priority = channel._get_message_priority(queued._raw, reverse=False)
        list_key = (channel.global_keyprefix or "") + channel._q_for_pri(bound.name, priority)
        args += [queued.delivery_tag, keys.index(list_key) + 1, json.dumps(queued._raw)]
    with channel.conn_or_acquire() as client:
        client.eval(_GIVE_BACK, len(keys), *keys, *args)
    for queued in taken:
        _forget(queued)


def ack(done: list[Any]) -> None:
    """Acknowledge many messages in one round trip (kombu's ``ack`` takes one each)."""
    channel = done[0].channel
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline()  # kombu's own client: it adds any global key prefix
        for queued in done:
            pipe.zrem(channel.unacked_index_key, queued.delivery_tag)
            pipe.hdel(channel.unacked_key, queued.delivery_tag)
        pipe.execute()
    for queued in done:
        _forget(queued)


def _forget(queued: Any) -> None:
    """Drop a message from kombu's in-memory record of the unacknowledged: it is settled."""
    virtual.QoS.ack(queued.channel.qos, queued.delivery_tag)
    queued._state = "ACK"
