"""kombu's Redis transport, with every take from a queue one atomic step on the server.

kombu emulates acknowledgements on Redis: each unacknowledged message waits in the ``unacked``
hash (delivery tag -> [payload, exchange, routing key]) and the ``unacked_index`` sorted set
(delivery tag -> when taken); ``basic_ack`` removes both, and the visibility-timeout restore
moves what is left back to its queue. But kombu's consumer takes a message with ``BRPOP`` and
records it unacknowledged in a second round trip, and holds a ``BRPOP`` reply unread while the
worker has no room for it: a worker killed in between (or a broker restarting) loses the
message. Here the consumer only waits on the queue (``BLMOVE`` of a list onto itself returns
its tail and leaves it there), then takes and records in one script.

Workers use this transport on a ``redis://`` or ``rediss://`` broker unless the project sets
Celery's ``broker_transport`` itself (``consume_atomically``).
"""

from __future__ import annotations

import json
import logging
import time
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis, virtual

logger = logging.getLogger(__name__)

TRANSPORT = "django_cio.broker.redis:Transport"

# KEYS: unacked, unacked_index, then the lists to take from, in order.
# ARGV: most messages, the time taken (kombu's clock: the client's).
# Returns {index of the list among those taken from, payload} for each message; index 0 for an
# item that is not a kombu message (taken out of the way, not recorded).
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
      taken[#taken + 1] = {0, item}
    end
  end
end
return taken
"""


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
    for index, item in pairs:
        if index:
            taken.append((queue_of[index - 1], item))
        else:  # kombu's own consumer fails on it the same way
            logger.error("Dropped an item of %d bytes from queue %s: not a kombu message.",
                         len(item), queue_of[0])
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
        super().__init__(*args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Wait for the first active queue (in kombu's fair cycle) to hold a message."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        key, = prefixed(self, [self._q_for_pri(queues[0], 0)])
        timeout = self.brpop_timeout if timeout is None else timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu: None until sent
        self.client.connection.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        """The wait is over (a message, or the timeout): take what there is room for, from
        every active queue (a message in another queue or priority waits one timeout at most)."""
        try:
            self.client.parse_response(self.client.connection, "BLMOVE", **options)
        except self.connection_errors:
            self.client.connection.disconnect()  # the next poll reconnects
            raise
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            self._flush_brpop_reauth()
        queues = self._queue_cycle.consume(len(self.active_queues))
        taken = self._take(queues, self.qos.can_consume_max_estimate() or 1)
        if not taken:
            raise redis.Empty()
        for position, (queue, payload) in enumerate(taken):
            try:
                self._queue_cycle.rotate(queue)
                self.connection._deliver(payload, queue)
            except BaseException:
                for _, rest in taken[position + 1:]:  # recorded but never handed to kombu
                    self.qos.restore_by_tag(rest["properties"]["delivery_tag"])
                raise
        return True

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if no_ack:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        taken = self._take([queue], 1)
        if not taken:
            return None
        message = self.Message(taken[0][1], channel=self)
        self.qos.append(message, message.delivery_tag)
        return message

    def _take(self, queues: list[str], limit: int) -> list[tuple[str, dict[str, Any]]]:
        taken = [(queue, json.loads(item)) for queue, item in take(self, queues, limit)]
        self.recorded.update(payload["properties"]["delivery_tag"] for _, payload in taken)
        return taken


class Transport(redis.Transport):
    Channel = Channel


def consume_atomically(sender: Any, **kwargs: Any) -> None:
    """``worker_init`` receiver: a worker on a Redis broker consumes through ``Transport``,
    unless the project chose Celery's ``broker_transport`` itself."""
    conf = sender.app.conf
    url = conf.broker_read_url
    if conf.broker_transport or not isinstance(url, str):
        return
    if urlsplit(url.split(";")[0]).scheme in ("redis", "rediss"):
        conf.broker_transport = TRANSPORT
        logger.info("Consuming from Redis with %s (each take recorded atomically).", TRANSPORT)
