"""kombu's Redis transport, fixed so that losing the broker makes the worker reconnect, not exit, and so that a
message a worker refuses goes where RabbitMQ's dead-letter exchange puts it (worker.rabbitmq): <queue>.dead."""
from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.routing import dead_letter_queue


class QoS(redis.QoS):
    def reject(self, delivery_tag, requeue=False):
        # kombu drops a message rejected without requeue (Celery's answer to an unknown task or a malformed
        # message); it moves to <queue>.dead instead, in the transaction that takes it out of the unacked hash.
        if requeue:
            return super().reject(delivery_tag, requeue=True)

        def dead_letter(pipe):
            raw = pipe.hget(self.unacked_key, delivery_tag)
            pipe.multi()
            self._remove_from_indices(delivery_tag, pipe)
            if raw:
                payload, exchange, routing_key = loads(bytes_to_str(raw))
                for queue in self.channel._lookup(exchange, routing_key):
                    pipe.rpush(dead_letter_queue(queue), dumps(payload))

        with self.channel.conn_or_acquire() as client:
            client.transaction(dead_letter, self.unacked_key)
        virtual.QoS.ack(self, delivery_tag)


class Channel(redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous=False):
        # Celery 5.7 closes the consumer's connection after collecting it. Closing a channel with
        # unacknowledged messages reaches here with the transport's client gone: the AttributeError
        # kombu raised was an "unrecoverable error" and the worker shut down. A connection error is
        # handled (the messages stay unacked in Redis; the outbox relay re-drives their operations).
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    def _create_client(self, asynchronous=False):
        # kombu builds a new redis.Redis (some 170 response callbacks registered) for every publish, event
        # and ack: most of a send's CPU. One client per channel and pool does the same: a client holds no
        # state of its own, each command takes a connection from the pool (reset after a fork).
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self.__dict__.get("_sync_client")
        if client is None or client.connection_pool is not self.pool:
            client = self.__dict__["_sync_client"] = super()._create_client()
        return client


class Transport(redis.Transport):
    Channel = Channel
