"""How the kernel's KSM selftests are found, chosen and read, on recorded real text: the
selftest directory of a source (vm/ until 6.2, mm/ since 6.3), the cases from the KSM lines
of run_vmtests.sh (6.1, 6.12, 7.2 as Debian ships them), the helper sources from the
Makefile, the uapi headers as `make headers` edits them, and their KTAP output."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.assets.ktap import judge, ktap_plan, parse_ktap
from harness.assets.selftests import (
    FIXES,
    Built,
    Invocation,
    Unbuildable,
    apply_fixes,
    fixes_for,
    helpers,
    install_header,
    invocations,
    selftest_dir,
)
from tests.ksm.test_selftests import CASES

DATA = Path(__file__).parent / "data" / "selftests"
KSM_TESTS_6_1 = ["-M -p 10", "-U", "-Z -p 10 -z 0", "-Z -p 10 -z 1", "-N -m 1", "-N -m 0"]


def script(series: str) -> str:
    return (DATA / f"run_vmtests-{series}.sh").read_text()


# --- the directory -------------------------------------------------------------------------

def tree_with(tmp_path: Path, *dirs: str) -> Path:
    for d in dirs:
        (tmp_path / "tools/testing/selftests" / d).mkdir(parents=True)
        (tmp_path / "tools/testing/selftests" / d / "ksm_tests.c").write_text("int main;\n")
    return tmp_path


@pytest.mark.parametrize("dirs, chosen", [(("vm",), "vm"), (("mm",), "mm"),
                                          (("vm", "mm"), "mm")])
def test_the_selftest_directory_is_mm_since_6_3_and_vm_before(
        tmp_path: Path, dirs: tuple[str, ...], chosen: str) -> None:
    assert selftest_dir(tree_with(tmp_path, *dirs)) == tmp_path / "tools/testing/selftests" / chosen


def test_a_source_without_ksm_tests_is_unbuildable_with_the_places_looked_at(
        tmp_path: Path) -> None:
    (tmp_path / "tools/testing/selftests/mm").mkdir(parents=True)  # a directory, no test
    with pytest.raises(Unbuildable, match=r"no ksm_tests\.c in tools/testing/selftests/mm "
                                          r"or tools/testing/selftests/vm"):
        selftest_dir(tmp_path)


# --- the cases -----------------------------------------------------------------------------

def test_6_1_runs_the_six_ksm_tests_lines_without_categories() -> None:
    assert [i.case for i in invocations(script("6.1"))] == KSM_TESTS_6_1
    assert {i.program for i in invocations(script("6.1"))} == {"ksm_tests"}


@pytest.mark.parametrize("series", ["6.12", "7.2"])
def test_6_12_and_7_2_add_the_timing_runs_and_the_functional_tests(series: str) -> None:
    found = invocations(script(series))
    assert [i.case for i in found] == ["-H -s 100", "-P -s 100", *KSM_TESTS_6_1,
                                       "ksm_functional_tests"]
    assert found[-1] == Invocation("ksm_functional_tests", "")
    assert found[0] == Invocation("ksm_tests", "-H -s 100")


@pytest.mark.parametrize("series", ["6.1", "6.12", "7.2"])
def test_every_case_of_the_series_we_run_is_collected(series: str) -> None:
    assert [i.case for i in invocations(script(series)) if i.case not in CASES] == []


def test_comments_other_programs_and_repeats_are_not_cases() -> None:
    text = ("# run_test ./ksm_tests -X\n"
            "CATEGORY=\"madv_populate\" run_test ./madv_populate\n"
            "CATEGORY=\"ksm\" run_test ./ksm_tests   -U   # unmerge\n"
            "CATEGORY=\"ksm\" run_test ./ksm_tests -U\n"
            "run_test ./ksm_tests_new -Q\n")
    assert invocations(text) == [Invocation("ksm_tests", "-U")]


def test_no_ksm_line_means_no_case() -> None:
    assert invocations("CATEGORY=\"hmm\" run_test bash ./test_hmm.sh smoke\n") == []


# --- the build's inputs --------------------------------------------------------------------

def test_helpers_come_from_the_makefile_rules_of_each_series() -> None:
    mk_6_1 = ("$(OUTPUT)/khugepaged: vm_util.c\n$(OUTPUT)/madv_populate: vm_util.c\n"
              "$(OUTPUT)/ksm_tests: LDLIBS += -lnuma\n")
    mk_6_12 = ("$(TEST_GEN_PROGS): vm_util.c thp_settings.c\n"
               "$(TEST_GEN_FILES): vm_util.c thp_settings.c\n"
               "$(OUTPUT)/ksm_tests: LDLIBS += -lnuma\n")
    mk_7_2 = ("$(TEST_GEN_PROGS): vm_util.c hugepage_settings.c\n"
              "$(TEST_GEN_FILES): vm_util.c hugepage_settings.c\n")
    assert helpers(mk_6_1, "ksm_tests") == []
    assert helpers(mk_6_12, "ksm_tests") == ["vm_util.c", "thp_settings.c"]
    assert helpers(mk_7_2, "ksm_functional_tests") == ["vm_util.c", "hugepage_settings.c"]


def test_uapi_headers_are_edited_as_make_headers_does() -> None:
    src = ("#ifndef _UAPI_LINUX_FS_H\n#define _UAPI_LINUX_FS_H\n"
           "#include <linux/compiler.h>\n"
           "struct pm_scan_arg { __u64 start; void __user *vec; } __packed;\n"
           "static inline int f(void) { return 0; }\n"
           "#endif /* _UAPI_LINUX_FS_H */\n")
    out = install_header(src)
    assert "#ifndef _LINUX_FS_H\n#define _LINUX_FS_H\n" in out
    assert "#endif /* _LINUX_FS_H */" in out
    assert "__user" not in out and "void *vec" in out
    assert "linux/compiler.h" not in out
    assert "__attribute__((packed))" in out and "__packed" not in out
    assert "static __inline__ int f" in out


# --- fixes the kernel made itself ----------------------------------------------------------

ARGV = next(fix for fix in FIXES if fix.program == "ksm_functional_tests")


def test_the_functional_tests_fixes_belong_to_their_case() -> None:
    assert [f.name for f in fixes_for("ksm_functional_tests")] == [
        "fork-exec-child-argv-unterminated", "prot-none-written-as-our-tracer"]


def test_a_source_with_the_kernels_own_fix_needs_none_of_ours() -> None:
    later = "int child(void)\n{\n" + ARGV.upstream + "}\n"
    assert apply_fixes(later, (ARGV,)) == later
    earlier = "int child(void)\n{\n" + ARGV.old + "}\n"
    assert apply_fixes(earlier, (ARGV,)).count(", NULL };") == 1
    with pytest.raises(Unbuildable, match="fork-exec-child-argv-unterminated"):
        apply_fixes("int child(void)\n{\n}\n", (ARGV,))


PROT_NONE = next(fix for fix in FIXES if fix.name == "prot-none-written-as-our-tracer")


def test_the_prot_none_write_is_made_by_a_tracer_and_checked_as_before() -> None:
    source = "static void test_prot_none(void)\n{\n" + PROT_NONE.old + "}\n"
    fixed = apply_fixes(source, (PROT_NONE,))
    assert "lseek(mem_fd" not in fixed and "0x4206L /* PTRACE_SEIZE */" in fixed
    assert fixed.count('ksft_test_result_fail("ptrace write failed\\n");') == 1
    assert PROT_NONE.upstream == ""  # no kernel has its own fix: ours is always needed


def test_only_the_fixes_a_source_needed_are_reported(tmp_path: Path) -> None:
    sdir = tree_with(tmp_path / "tree", "mm") / "tools/testing/selftests/mm"
    (sdir / "ksm_functional_tests.c").write_text(
        "int child(void)\n{\n" + ARGV.upstream + "}\n" + PROT_NONE.old)
    built = Built(tmp_path / "bin", tmp_path / "tree", "7.2")
    assert built.fixes_applied("ksm_functional_tests") == [PROT_NONE]
    assert built.fixes_applied("-U") == []  # ksm_tests.c has not the -U fix's text


# --- KTAP ----------------------------------------------------------------------------------

def test_ksm_functional_tests_results_carry_their_run_names() -> None:
    text = (DATA / "ksm_functional_tests-6.12-unfixed.ktap").read_text()
    results = parse_ktap(text)
    assert ktap_plan(text) == 9
    # the unfixed exec's child ran the parent's remaining tests: 10 lines for a plan of 9
    assert len(results) == 10
    assert [r.number for r in results] == [1, 2, 3, 4, 5, 6, 7, 8, 8, 9]
    assert results[0].test == "test_unmerge" and results[0].description == "Pages were unmerged"
    assert results[1].name == "2 test_unmerge_zero_pages KSM zero pages were unmerged"
    assert {r.verdict for r in results} == {"pass"}


def test_a_skip_is_a_skip_with_its_reason_and_a_failure_a_failure() -> None:
    text = ("TAP version 13\n1..4\n# [RUN] test_unmerge_zero_pages\n"
            "ok 1 # SKIP open(\"/proc/self/ksm_stat\") failed\n"
            "# [RUN] test_unmerge\nnot ok 2 Pages were unmerged\n"
            "ok 3 - described # XFAIL known\n"
            "ok 4 Setting/clearing PR_SET_MEMORY_MERGE works\n")
    results = parse_ktap(text)
    assert [r.verdict for r in results] == ["skip", "fail", "xfail", "pass"]
    assert results[0].reason == 'open("/proc/self/ksm_stat") failed'
    assert results[0].test == "test_unmerge_zero_pages" and results[0].description == ""
    assert results[1].name == "2 test_unmerge Pages were unmerged"
    assert results[2].description == "described" and results[3].test == ""


def test_output_without_ktap_has_no_results_and_no_plan() -> None:
    text = "KSM merging\nOK\n"  # 6.1's ksm_tests
    assert parse_ktap(text) == [] and ktap_plan(text) is None


# --- a case's verdict ----------------------------------------------------------------------

def ktap(*lines: str, plan: int | None = None) -> str:
    results = sum(line.startswith(("ok ", "not ok ")) for line in lines)
    head = ["TAP version 13", f"1..{plan if plan is not None else results}"]
    return "\n".join([*head, *lines, "# Totals: ..."])


def test_all_ktap_results_passing_and_exit_0_pass() -> None:
    assert judge("./ksm_tests -U", 0, ktap("ok 1 KSM unmerging")) == ("pass", "")


def test_a_ktap_skip_among_passes_is_a_skip_with_its_reason_never_a_pass() -> None:
    out = ktap("# [RUN] test_unmerge", "ok 1 Pages were unmerged",
               "# [RUN] test_unmerge_uffd_wp", "ok 2 # SKIP UFFD_FEATURE_PAGEFAULT_FLAG_WP "
               "not available")
    outcome, why = judge("./ksm_functional_tests", 0, out)
    assert outcome == "skip"
    assert "(1 passed)" in why
    assert "2 test_unmerge_uffd_wp UFFD_FEATURE_PAGEFAULT_FLAG_WP not available" in why


def test_the_programs_own_skip_is_a_skip() -> None:
    out = "TAP version 13\n1..1\n# Transparent Hugepages not available\nok 1 # SKIP KSM merge time"
    assert judge("./ksm_tests -H -s 100", 4, out)[0] == "skip"


@pytest.mark.parametrize("status, output, says", [
    (1, ktap("# [RUN] test_prot_none", "not ok 1 ptrace write failed"),
     "KTAP failures ['1 test_prot_none ptrace write failed']"),
    (139, "TAP version 13\n1..1\n", "exit 139"),
    (1, "KSM unmerging\nNot OK\n", "Not OK"),   # 6.1
    (0, (DATA / "ksm_functional_tests-6.12-unfixed.ktap").read_text(),
     "announced 9 results, printed 10"),
    (0, ktap("ok 1 Pages were unmerged", plan=2), "announced 2 results, printed 1"),
])
def test_what_fails_a_case(status: int, output: str, says: str) -> None:
    outcome, why = judge("./prog", status, output)
    assert outcome == "fail" and says in why
