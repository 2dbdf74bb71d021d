"""The local cluster's node start retries Ray's startup timeout with a growing pause, and says so."""
import pytest

from curation.local_cluster import _retrying


def _flaky(fails: int):
    calls = []

    def start():
        calls.append(1)
        if len(calls) <= fails:
            raise Exception("The current node timed out during startup. This could happen because ...")
        return "node"

    return start, calls


def test_retries_with_a_message_then_succeeds(capsys):
    start, calls = _flaky(2)
    assert _retrying(start, attempts=5, backoff_s=0.01) == "node"
    assert len(calls) == 3
    err = capsys.readouterr().err
    assert "attempt 1/5" in err and "attempt 2/5" in err and "retrying in" in err


def test_gives_up_with_a_clear_error():
    start, calls = _flaky(10)
    with pytest.raises(RuntimeError, match="did not register within Ray's 30 s in 3 attempts"):
        _retrying(start, attempts=3, backoff_s=0.01)
    assert len(calls) == 3


def test_other_errors_are_not_retried():
    def start():
        raise ValueError("bad port")

    with pytest.raises(ValueError, match="bad port"):
        _retrying(start, attempts=3, backoff_s=0.01)
