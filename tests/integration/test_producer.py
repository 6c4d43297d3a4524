"""The producer on the real (Redis) broker: what is published, when, and how it is grouped."""

import asyncio
import logging
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction

import django_cio
from django_cio import producer
from django_cio.broker.publish import MAX_MESSAGE_BYTES
from django_cio.exceptions import ValidationError
from django_cio.models import Outbox
from django_cio.operations import Identify, dumps
from tests.celery_app import BROKERS
from tests.conftest import use_broker

pytestmark = pytest.mark.django_db(transaction=True)


def kinds(message):
    return [op["kind"] for op in message]


def test_a_transactions_ops_leave_as_one_message_after_commit(published):
    with transaction.atomic():
        django_cio.identify("u1", email="u1@example.com")
        for number in range(9):
            django_cio.track("u1", "clicked", number=number)
        assert published == []  # nothing before the commit
    assert len(published) == 1
    assert kinds(published[0]) == ["identify"] + ["event"] * 9


def test_a_rolled_back_transaction_sends_nothing(published):
    with pytest.raises(RuntimeError), transaction.atomic():
        django_cio.identify("u1", email="u1@example.com")
        raise RuntimeError
    assert published == []


def test_a_rolled_back_savepoint_drops_only_its_own_ops(published):
    with transaction.atomic():
        django_cio.track("u1", "kept_before")
        with pytest.raises(RuntimeError), transaction.atomic():
            django_cio.track("u1", "dropped")
            raise RuntimeError
        with transaction.atomic():
            django_cio.track("u1", "kept_inside")
        django_cio.track("u1", "kept_after")
    assert [[op["name"] for op in message] for message in published] == [
        ["kept_before", "kept_inside", "kept_after"]
    ]


@pytest.mark.parametrize("inner_commits", [True, False])
def test_ops_in_a_last_savepoint_join_the_one_message(published, inner_commits):
    with transaction.atomic():
        django_cio.track("u1", "outer")
        with transaction.atomic():
            django_cio.track("u1", "inner")
            if not inner_commits:
                transaction.set_rollback(True)
    assert [[op["name"] for op in message] for message in published] == (
        [["outer", "inner"]] if inner_commits else [["outer"]]
    )


def test_an_app_hook_that_raises_does_not_cost_the_transactions_ops(published):
    # Django stops running a transaction's hooks at the first one that raises (Celery's own
    # delay_on_commit does when the broker is down); ours ran first, so nothing is lost.
    def failing_hook():
        raise ConnectionError("the app's broker is down")

    with pytest.raises(ConnectionError), transaction.atomic():
        django_cio.track("u1", "before_the_hook")
        transaction.on_commit(failing_hook)
        django_cio.track("u1", "after_the_hook")
    assert [[op["name"] for op in message] for message in published] == [
        ["before_the_hook", "after_the_hook"]
    ]


def test_ops_captured_by_djangos_test_helper_are_each_handed_on(
        django_capture_on_commit_callbacks, published):
    # The documented test pattern: an op made before the block must not swallow the ones made
    # inside it (it used to leave only a flush of nothing in the captured hooks).
    with transaction.atomic():
        django_cio.track("u1", "before")
        with django_capture_on_commit_callbacks(execute=True) as hooks:
            django_cio.track("u1", "inside")
        assert len(hooks) == 1
        transaction.set_rollback(True)
    assert [[op["name"] for op in message] for message in published] == [["inside"]]


def test_a_transaction_opened_by_a_commit_hook_gets_its_own_message(published):
    def hook_with_its_own_transaction():
        with transaction.atomic():
            django_cio.track("u2", "from_hook")

    with transaction.atomic():
        django_cio.track("u1", "a")
        transaction.on_commit(hook_with_its_own_transaction)
        django_cio.track("u1", "b")
    names = sorted([op["name"] for op in message] for message in published)
    assert names == [["a", "b"], ["from_hook"]]


def test_a_call_outside_any_transaction_is_sent_at_once(published):
    django_cio.identify("u1", plan="free")
    django_cio.track("u1", "upgraded")
    assert [kinds(message) for message in published] == [["identify"], ["event"]]


def test_batch_groups_calls_and_committed_transactions_into_one_message(published):
    with django_cio.batch():
        django_cio.identify("u1", plan="free")
        with transaction.atomic():
            django_cio.track("u1", "ordered")
        with pytest.raises(RuntimeError), transaction.atomic():
            django_cio.track("u1", "rolled_back")
            raise RuntimeError
        django_cio.page("u1", "https://example.com/thanks")
        assert published == []
    assert [kinds(message) for message in published] == [["identify", "event", "page"]]
    assert published[0][2]["name"] == "https://example.com/thanks"


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_ops_follow_the_transaction_of_the_database_that_has_one(published):
    with transaction.atomic(using="other"):
        django_cio.identify("u1")
        assert published == []  # waits for the commit of "other"
    assert len(published) == 1
    with transaction.atomic(using="other"):
        producer.enqueue(Identify("u2", {}), using="default")  # no transaction there
    assert len(published) == 2


def test_bad_input_raises_at_call_time_naming_the_field(published):
    with pytest.raises(ValidationError, match=r"attributes\.email") as caught:
        django_cio.identify("u1", email="x" * 2000)
    assert caught.value.field == "attributes.email"
    assert "xxxx" not in str(caught.value)
    assert published == []


def test_disabled_validates_then_drops(settings, published):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "ENABLED": False}
    with pytest.raises(ValidationError):
        django_cio.track("", "nameless person")
    with transaction.atomic():
        django_cio.track("u1", "dropped")
    assert published == []


def test_big_messages_are_split_under_the_size_cap(published):
    with transaction.atomic():
        for number in range(40):
            django_cio.identify(f"u{number}", bio="b" * 900, notes="n" * 900, more="m" * 900,
                                extra="e" * 900, other="o" * 900, last="l" * 900, x="x" * 900,
                                y="y" * 900)
    assert len(published) == 2
    assert sum(len(message) for message in published) == 40
    sizes = [len(dumps(message)) for message in published]
    assert max(sizes) <= MAX_MESSAGE_BYTES


def test_event_ids_are_given_when_the_op_is_made(published):
    with transaction.atomic():
        django_cio.track("u1", "a")
        django_cio.track("u1", "a")
    first, second = published[0]
    assert first["id"] != second["id"] and len(first["id"]) == 26  # two ULIDs


def test_when_the_broker_is_down_the_request_succeeds_and_the_outbox_keeps_the_ops(
    published, dead_broker, caplog
):
    with caplog.at_level(logging.WARNING, "django_cio"), transaction.atomic():
        django_cio.identify("u1", email="secret@example.com")
        django_cio.track("u1", "signup")
    assert published == []
    row = Outbox.objects.get()
    assert kinds(row.ops) == ["identify", "event"] and row.failures == 0
    assert "broker unavailable" in caplog.text
    assert "secret@example.com" not in caplog.text and "u1" not in caplog.text


def test_offline_backends_deliver_at_commit_without_broker_or_worker(cio_outbox, published):
    with transaction.atomic():
        django_cio.identify("u1", plan="pro")
        assert cio_outbox == []
    assert [(op.kind, op.person_id) for op in cio_outbox] == [("identify", "u1")]
    assert published == []


@pytest.mark.django_db(transaction=False)
def test_cio_outbox_with_pytest_djangos_on_commit_capture(
    cio_outbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        django_cio.track("u1", "signup")
    assert [op.kind for op in cio_outbox] == ["event"]


def test_a_hung_broker_does_not_hang_the_request(published, private_redis):
    use_broker(private_redis.url)
    try:
        django_cio.identify("warm-up")  # connected and declared while the broker answers
        private_redis.pause()
        def identify_then_close():
            django_cio.identify("u1")
            connections.close_all()  # this thread wrote the outbox row

        request = threading.Thread(target=identify_then_close, daemon=True)
        request.start()
        request.join(timeout=30)  # a liveness bound, 30 times the publish timeout
        assert not request.is_alive()
    finally:
        private_redis.resume()
        use_broker(BROKERS["redis"])
    assert [op["person_id"] for op in Outbox.objects.get().ops] == ["u1"]


def test_message_headers_carry_no_values(published):
    django_cio.identify("u1", email="secret@example.com")
    assert published.details[0]["argsrepr"] == "[<1 ops>]"


def test_a_batch_left_by_an_exception_still_sends_what_committed(published):
    with pytest.raises(RuntimeError), django_cio.batch():
        django_cio.track("u1", "outside_any_transaction")
        with transaction.atomic():
            django_cio.track("u1", "committed")
        with transaction.atomic():
            django_cio.track("u1", "rolled_back")
            raise RuntimeError
    assert [[op["name"] for op in message] for message in published] == [
        ["outside_any_transaction", "committed"]
    ]


def test_an_op_made_after_its_batch_closed_is_still_sent(published, wait_for):
    # asyncio.create_task copies the request's context, batch included: an op the task makes
    # once the batch was sent goes out on its own, from the event loop and from a thread.
    async def later(loop_thread: bool) -> None:
        await asyncio.sleep(0.01)
        if loop_thread:
            django_cio.track("u1", "from_the_loop")
        else:
            await sync_to_async(django_cio.track)("u1", "from_a_thread")

    async def request() -> list[asyncio.Task]:
        with django_cio.batch():
            django_cio.track("u1", "in_the_request")
            return [asyncio.create_task(later(True)), asyncio.create_task(later(False))]

    async def main() -> None:
        await asyncio.gather(*await request())

    asyncio.run(main())
    wait_for(lambda: len(published) == 3)
    assert sorted(op["name"] for message in published for op in message) == [
        "from_a_thread", "from_the_loop", "in_the_request"]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_message_parked_while_the_outbox_database_is_in_a_transaction_outlives_its_rollback(
        dead_broker):
    if connections["default"].vendor == "sqlite":
        pytest.skip("SQLite has one writer: a second connection would wait for this one")
    # The ops of "other" commit while "default" (the Outbox's database) is inside a
    # transaction that then rolls back: the parked message must not go with it.
    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic(using="other"):
            producer.enqueue(Identify("u1", {}), using="other")
        raise RuntimeError
    assert [op["person_id"] for op in Outbox.objects.get().ops] == ["u1"]
