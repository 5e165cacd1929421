"""kombu's Redis transport, fixed so that losing the broker makes the worker reconnect, not exit."""
from kombu.transport import redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(redis.Channel):
    def _connparams(self, asynchronous=False):
        # Celery 5.7 closes the consumer's connection after collecting it. Closing a channel with
        # unacknowledged messages reaches here with the transport's client gone: the AttributeError
        # kombu raised was an "unrecoverable error" and the worker shut down. A connection error is
        # handled (the messages stay unacked in Redis; the outbox relay re-drives their operations).
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(redis.Transport):
    Channel = Channel
