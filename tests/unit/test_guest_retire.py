"""harness.guest_handle.Guest: a broken VM is stopped with the verdict and its successor booted only
on the guest's next use; fixtures can tell that their VM is gone without booting one."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from harness.guest_handle import Guest


class FakeConsole:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add_listener(self, fn: Any) -> None:
        pass

    def arrived(self, index: int) -> float | None:
        return None


def make_guest() -> tuple[Guest, list[str]]:
    events: list[str] = []

    def boot() -> Any:
        events.append("boot")
        return SimpleNamespace(console=FakeConsole(), ssh=None, timings={},
                               name=events.count("boot"), alive=lambda: None,
                               frozen=lambda: None)

    def stop(vm: Any) -> None:
        events.append(f"stop {vm.name}")

    return Guest(boot, stop), events


def test_retire_stops_now_and_the_next_use_boots() -> None:
    guest, events = make_guest()
    first = guest.generation
    guest.retire()
    assert events == ["boot", "stop 1"] and guest.retired
    assert guest.gone_since(first)  # asking does not boot
    assert events == ["boot", "stop 1"]
    successor: Any = guest.vm  # any use of the guest boots its successor (boot()'s fake)
    assert successor.name == 2
    assert events == ["boot", "stop 1", "boot"] and not guest.retired
    assert guest.gone_since(first) and not guest.gone_since(guest.generation)


def test_close_of_a_retired_guest_boots_nothing() -> None:
    guest, events = make_guest()
    guest.retire()
    guest.close()
    assert events == ["boot", "stop 1", "stop 1"]


def test_a_vm_whose_qemu_exited_or_stopped_has_nothing_to_undo() -> None:
    # the fault matrix's qemu-kill@teardown: the fixtures' undo would only time out
    guest, events = make_guest()
    now = guest.generation
    assert not guest.gone_since(now)
    guest.vm.frozen = lambda: "QEMU 1 is stopped"  # type: ignore[method-assign]
    assert guest.gone_since(now)
    assert guest.lost is not None and guest.lost[1] == "guest hung: QEMU 1 is stopped"
    guest.vm.frozen = lambda: None  # type: ignore[method-assign]
    guest.vm.alive = lambda: "QEMU exited (status None, signal 9)"  # type: ignore[method-assign]
    assert guest.gone_since(now) and events == ["boot"]  # asking boots nothing
