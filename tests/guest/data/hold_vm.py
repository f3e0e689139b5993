"""Run by test_teardown in a child pytest: boot a guest, say so, then wait to be killed."""


def test_hold(vm):
    print("VM-READY", flush=True)
    vm.run("sleep 600", timeout=700)
