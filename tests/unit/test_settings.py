"""App settings: validated at creation, unknown names listed, URLs from arguments, then the
environment, then the default."""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

from faena import ConfigurationError, Faena, Settings
from faena.app import core
from faena.app.settings import SETTING_NAMES
from faena.foundation.util import redacted

from .support import AppFactory


@pytest.fixture(autouse=True)
def _no_url_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAENA_BROKER_URL", raising=False)
    monkeypatch.delenv("FAENA_RESULTS_URL", raising=False)


def test_unknown_setting_is_an_error_listing_the_valid_names() -> None:
    # When an app is created with a misspelt setting
    with pytest.raises(ConfigurationError) as caught:
        Faena("shop", broker="memory://", result_tll=60)
    # Then the error names it and lists every valid setting
    text = str(caught.value)
    assert "result_tll" in text
    for name in SETTING_NAMES:
        assert name in text


def test_setting_names_are_the_settings_fields() -> None:
    # Then the valid names listed in errors are exactly the settings, sorted
    assert set(SETTING_NAMES) == set(Settings.__dataclass_fields__)
    assert list(SETTING_NAMES) == sorted(SETTING_NAMES)


def test_settings_are_applied(make_app: AppFactory) -> None:
    # When an app is created with settings
    app = make_app(default_queue="jobs", result_ttl=5.0, accept=["json", "pickle"])
    # Then they are applied
    assert app.settings.default_queue == "jobs"
    assert app.settings.result_ttl == 5.0
    assert app.settings.accept == ("json", "pickle")  # a list is accepted and frozen


def test_default_urls_are_the_sqlite_file_for_both() -> None:
    # Given no URL arguments and no environment
    with Faena("shop") as app:
        # Then both default to the embedded SQLite file (nothing is opened yet)
        assert app.broker_url == "sqlite:///faena.sqlite3"
        assert app.results_url == "sqlite:///faena.sqlite3"


def test_results_default_to_the_broker_url() -> None:
    # Given only a broker URL, Then results use the same store
    with Faena("shop", broker="memory://") as app:
        assert app.results_url == "memory://"


def test_environment_urls_are_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment names a broker and a result store
    monkeypatch.setenv("FAENA_BROKER_URL", "memory://env-broker")
    monkeypatch.setenv("FAENA_RESULTS_URL", "memory://env-results")
    # When an app is created without URLs
    with Faena("shop") as app:
        # Then it uses them
        assert app.broker_url == "memory://env-broker"
        assert app.results_url == "memory://env-results"


def test_environment_broker_url_also_sets_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given only FAENA_BROKER_URL
    monkeypatch.setenv("FAENA_BROKER_URL", "memory://env-broker")
    # When an app is created, Then results use the same store
    with Faena("shop") as app:
        assert app.results_url == "memory://env-broker"


def test_explicit_urls_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given both URLs in the environment
    monkeypatch.setenv("FAENA_BROKER_URL", "sqlite:///env.sqlite3")
    monkeypatch.setenv("FAENA_RESULTS_URL", "sqlite:///env-results.sqlite3")
    # When an app names its own, Then those win
    with Faena("shop", broker="memory://a", results="memory://b") as app:
        assert (app.broker_url, app.results_url) == ("memory://a", "memory://b")


def test_environment_is_read_when_the_app_is_created_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given faena is already imported (it is), When the variable is set afterwards
    monkeypatch.setenv("FAENA_BROKER_URL", "memory://late")
    # Then a new app still sees it
    with Faena("shop") as app:
        assert app.broker_url == "memory://late"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://localhost/test", "not part of this faena release"),
        ("amqp://guest@localhost", "not part of this faena release"),
        ("ftp://example.org", "unknown URL scheme"),
        ("just-a-name", "not a broker URL"),
    ],
)
def test_unsupported_broker_url_is_refused_at_creation(url: str, message: str) -> None:
    # When an app names a broker this release cannot use, Then creating it fails, saying why
    with pytest.raises(ConfigurationError, match=message):
        Faena("shop", broker=url)


@pytest.mark.parametrize("missing", ["redis", "hiredis"])
def test_a_redis_url_without_the_driver_is_refused_at_creation(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    # Given the Redis driver cannot be imported in this process
    monkeypatch.setitem(sys.modules, missing, None)
    # When an app names a Redis broker or result store, Then creating it says what to install
    for urls in ({"broker": "redis://127.0.0.1/0"}, {"results": "rediss://127.0.0.1/0"}):
        with pytest.raises(ConfigurationError, match=r"pip install 'faena\[redis\]'"):
            Faena("shop", **urls)


def test_unsupported_results_url_is_refused_at_creation() -> None:
    # When the results URL is unusable, Then creating the app fails
    with pytest.raises(ConfigurationError, match="unknown URL scheme"):
        Faena("shop", broker="memory://", results="nope://x")


def test_unsupported_env_url_is_refused_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an unusable URL in the environment
    monkeypatch.setenv("FAENA_BROKER_URL", "nope://x")
    # When an app is created, Then it fails
    with pytest.raises(ConfigurationError, match="unknown URL scheme"):
        Faena("shop")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"serializer": "yaml"}, "serializer must be one of"),
        ({"accept": ["json", "xml"]}, "accept must list"),
        ({"accept": []}, "accept must list"),
        ({"serializer": "pickle"}, "not in accept"),
        ({"default_queue": "has space"}, "invalid queue name"),
        ({"lease_s": 0}, "lease_s must be a positive number"),
        ({"lease_s": float("inf")}, r"lease_s must be a positive number \(not inf or nan\)"),
        ({"result_ttl": float("nan")}, r"result_ttl must be a positive number \(not inf or nan\)"),
        ({"result_ttl": -1}, "result_ttl must be a positive number"),
        ({"max_message_size": True}, "max_message_size must be a positive number"),
        ({"heartbeat_s": 30.0, "lease_s": 30.0}, "must be shorter than lease_s"),
        ({"max_deliveries": 0}, "max_deliveries must be an int from 1 to 65535"),
        ({"max_deliveries": 2.0}, "max_deliveries must be an int from 1 to 65535"),
        ({"max_deliveries": 65536}, "max_deliveries must be an int from 1 to 65535"),
        ({"function_modules": ["billing", ""]}, "function_modules must be a list of names"),
        ({"function_modules": 7}, "function_modules must be a list of names"),
        ({"accept": ["json", None]}, "accept must be a list of names"),
    ],
)
def test_bad_setting_values_are_refused(settings: dict[str, Any], message: str) -> None:
    # When a setting has a bad value, Then creating the app fails, saying what is expected
    with pytest.raises(ConfigurationError, match=message):
        Faena("shop", broker="memory://", **settings)


def test_heartbeat_defaults_to_a_third_of_the_lease(make_app: AppFactory) -> None:
    # Given a 9 s lease, Then leases are renewed every 3 s unless set
    assert make_app(lease_s=9.0).settings.heartbeat_interval_s == 3.0
    assert make_app(lease_s=9.0, heartbeat_s=1.0).settings.heartbeat_interval_s == 1.0


def test_app_needs_a_name() -> None:
    # When an app has no name, Then it is refused
    with pytest.raises(ConfigurationError, match="non-empty name"):
        Faena("", broker="memory://")


def test_function_modules_default_to_the_package_that_creates_the_app() -> None:
    # Given an app created in this module (package "tests")
    with Faena("shop", broker="memory://") as app:
        # Then RQ-style jobs may name functions of that package only
        assert app.function_modules == ("tests",)
    with Faena("shop", broker="memory://", function_modules=["billing"]) as app:
        assert app.function_modules == ("billing",)


def test_one_name_alone_is_a_list_of_one_not_of_letters() -> None:
    # Given settings that take lists, each given one name as a plain string
    with Faena("shop", broker="memory://", function_modules="billing", accept="json") as app:
        # Then each is that one name
        assert app.function_modules == ("billing",)
        assert app.settings.accept == ("json",)


@pytest.mark.parametrize("which", ["broker", "results"])
def test_an_empty_url_argument_is_refused_not_taken_for_the_default(
    which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a URL read from an unset variable, When it is given to the app, Then it is refused
    monkeypatch.delenv("FAENA_BROKER_URL", raising=False)
    with pytest.raises(ConfigurationError, match=f"{which} must be a URL"):
        Faena("shop", **{which: ""})
    # While an empty environment variable counts as unset
    monkeypatch.setenv("FAENA_BROKER_URL", "")
    with Faena("shop", broker=None, results="memory://") as app:
        assert app.broker_url == "sqlite:///faena.sqlite3"


def test_memory_app_keeps_its_data_across_close(app: Faena) -> None:
    # Given a memory app with a job waiting
    @app.task
    def noop() -> None: ...

    r = noop.delay()
    # When the app is closed (twice is fine) and used again
    app.close()
    app.close()
    # Then the job is still there: memory backends hold the data itself
    assert r.state == "QUEUED"


def test_app_coordination_store_lives_on_the_broker_url(tmp_path) -> None:
    # Given two apps on the same SQLite file (two processes' view of one deployment)
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first, second = Faena("a", broker=url), Faena("b", broker=url)
    try:
        # When one takes a key and a token
        assert first.coordination.set_if_absent("reports:daily", "first", 30)
        token = first.coordination.next_token("reports:daily")
        # Then the other sees the key taken and gets a later token
        assert not second.coordination.set_if_absent("reports:daily", "second", 30)
        assert second.coordination.get("reports:daily") == "first"
        assert second.coordination.next_token("reports:daily") > token
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("backend", ["broker", "results", "coordination"])
def test_a_backend_asked_for_by_two_threads_at_once_is_made_once(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # Given an app whose backend is slow to make, and a thread that is making it
    app = Faena("race", broker="memory://", results="memory://")
    maker = {"broker": "make_broker", "results": "make_result_store"}.get(
        backend, "make_coordination_store"
    )
    real = getattr(core, maker)
    made: list[object] = []
    first_inside = threading.Event()
    second_done = threading.Event()

    def slow_make(*args: object) -> object:
        made.append(real(*args))
        if len(made) == 1:
            first_inside.set()
            # a second maker, if one could start, finishes meanwhile
            second_done.wait(0.5)
        return made[-1]

    monkeypatch.setattr(core, maker, slow_make)
    got: list[object] = []
    first = threading.Thread(target=lambda: got.append(getattr(app, backend)))
    first.start()
    assert first_inside.wait(5)
    # When a second thread asks for it meanwhile
    second = threading.Thread(target=lambda: (got.append(getattr(app, backend)), second_done.set()))
    second.start()
    first.join(5)
    second.join(5)
    # Then it was made once, and both threads have that one
    assert len(made) == 1
    assert len(got) == 2
    assert got[0] is got[1] is made[0]
    app.close()


def test_a_copied_app_is_the_app_itself() -> None:
    # An app is one service with its connections (and a lock): a canvas cloned with
    # copy.deepcopy keeps sending through it rather than through a copy
    app = Faena("copied", broker="memory://", results="memory://")
    assert copy.copy(app) is app
    assert copy.deepcopy({"app": app})["app"] is app
    app.close()


def test_a_child_forked_while_a_backend_is_being_made_can_make_its_own() -> None:
    # Given an app whose lock another thread holds (making a backend) at the moment of a fork
    app = Faena("forked", broker="memory://", results="memory://")
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with app._connecting:
            holding.set()
            done.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: that thread does not exist here
            code = 0 if app.broker is not None else 1
            os._exit(code)
        # Then the child makes its broker (its lock is its own) and exits, rather than hang
        deadline = time.monotonic() + 10
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hung on the app's lock")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(waited[1]) == 0
    finally:
        done.set()
        holder.join(5)
        app.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:s3cret@h:6379/0?prefix=a", "redis://app:***@h:6379/0?prefix=a"),
        ("redis://:s3cret@h", "redis://:***@h"),
        ("redis://h/0?password=s3cret&prefix=a", "redis://h/0?password=***&prefix=a"),
        ("redis+socket://:s3cret@/run/redis.sock?db=1", "redis+socket://:***@/run/redis.sock?db=1"),
        ("sqlite:///faena.sqlite3", "sqlite:///faena.sqlite3"),
        ("redis://user@h", "redis://user@h"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
    with Faena("shop", broker="memory://", results="memory://") as app:
        app.broker_url = url  # what repr shows
        assert "s3cret" not in repr(app)
