"""The plugin on a host that cannot boot VMs: the session fails at once with
one line (CI must not go green having run nothing), unless skipping is asked
for. No VM boots here."""

from __future__ import annotations

SAMPLE = """
from ktstr import CgroupDef, ktstr_test

@ktstr_test(duration=1)
def test_vm(ctx):
    ctx.execute_defs([CgroupDef("a")])

def test_plain():
    pass
"""


def test_no_kernel_fails_the_session_in_one_line(pytester, monkeypatch):
    monkeypatch.setenv("KTSTR_KERNEL", "/nonexistent/kernel")
    monkeypatch.delenv("KTSTR_ALLOW_SKIP", raising=False)
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    lines = [ln for ln in result.stdout.lines if "host lacks what VM tests need" in ln]
    assert len(lines) == 1 and "--ktstr-allow-skip" in lines[0] and "not found" in lines[0]
    assert "passed" not in result.stdout.str()


def test_skipping_is_an_explicit_choice_and_names_what_is_missing(pytester, monkeypatch):
    monkeypatch.setenv("KTSTR_KERNEL", "/nonexistent/kernel")
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--ktstr-allow-skip", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*host lacks what VM tests need*not found*"])
