"""ksm-harness: drive Linux KSM inside real QEMU NUMA guests."""
