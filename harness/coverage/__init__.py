"""Kernel coverage (``ksm-harness coverage``): gcov data collected from the guest of a
``source:6.1+gcov`` kernel, per test, turned into an lcov/HTML report, a per-test table and
the reach of every site where the kernel treats a KSM page specially."""
