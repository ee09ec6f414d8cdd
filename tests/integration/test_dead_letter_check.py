"""The fault-injection suite's dead-letter check (``faulty_load.py``) on hand-made records:
it must be able to fail, and say where."""

from __future__ import annotations

from types import SimpleNamespace

from tests.integration.faulty_load import Message, dead_letter_discrepancies


def test_the_dead_letter_check_reports_every_kind_of_discrepancy():
    """The check the runs end with, on hand-made records: silent when each bad message has
    its dead letter, and naming the partition and offset of each discrepancy."""
    topic = "readings"

    def letter(partition: int, offset: int, reason: str, value: bytes = b"v",
               key: bytes | None = b"k", source: str = topic):
        headers = [("cellwatch.reason", reason.encode()), ("cellwatch.detail", b"d"),
                   ("cellwatch.source.topic", source.encode()),
                   ("cellwatch.source.partition", str(partition).encode()),
                   ("cellwatch.source.offset", str(offset).encode())]
        return SimpleNamespace(key=key, value=value, headers=headers)

    sent = {(0, 1): Message(b"k", b"v", reason="invalid_json"),
            (0, 2): Message(b"k", b"v", reading=("s", 2)),
            (1, 5): Message(b"k", b"v", reason="future")}
    fine = [letter(0, 1, "invalid_json"), letter(1, 5, "future")]
    assert dead_letter_discrepancies(fine, sent, topic, exactly_once=True) == []
    twice = [*fine, letter(1, 5, "future")]
    assert dead_letter_discrepancies(twice, sent, topic, exactly_once=False) == []
    assert dead_letter_discrepancies(twice, sent, topic, exactly_once=True) == [
        "partition 1 offset 5: 2 dead letters for one future message"]
    assert dead_letter_discrepancies(fine[:1], sent, topic, exactly_once=False) == [
        "partition 1 offset 5: future message never dead-lettered"]
    found = dead_letter_discrepancies(
        [letter(0, 1, "invalid_utf8"), letter(0, 2, "duplicate"), letter(1, 5, "future"),
         letter(1, 5, "future", value=b"other"), letter(3, 9, "future"),
         letter(0, 1, "invalid_json", source="elsewhere")], sent, topic, exactly_once=False)
    assert [line.split(":")[0] for line in found] == [
        "dead letter from another topic", "partition 0 offset 1", "partition 0 offset 2",
        "partition 1 offset 5", "partition 1 offset 5", "partition 3 offset 9"], found
    assert "reason 'invalid_utf8', expected 'invalid_json'" in found[1]
    assert "good reading ('s', 2) dead-lettered ['duplicate']" in found[2]
    assert "2 different dead letters" in found[3] and "other bytes" in found[4]
