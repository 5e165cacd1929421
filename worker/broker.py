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
