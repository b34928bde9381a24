"""setup.cfg's warning filters: deprecations are errors in autorec_jax's code only."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = '''
import types
import warnings


def module(name, source):
    """A module called `name` (so warnings attribute to it) defined by `source`."""
    mod = types.ModuleType(name)
    mod.warnings = warnings
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


THIRD = module("somelib.api", "def old():\\n    warnings.warn('old', DeprecationWarning)\\n"
               "def old_for_caller():\\n"
               "    warnings.warn('old', DeprecationWarning, stacklevel=2)\\n")
OURS = module("autorec_jax.fake", "def old():\\n    warnings.warn('ours', DeprecationWarning)\\n")
CALLER = module("autorec_jax.caller", "def uses_old_api(lib):\\n    lib.old_for_caller()\\n")


def test_third_party_deprecation():
    THIRD.old()


def test_third_party_deprecation_from_third_party_caller():
    module("otherlib", "def f(lib):\\n    lib.old_for_caller()\\n").f(THIRD)


def test_own_deprecation():
    OURS.old()


def test_third_party_deprecation_blamed_on_our_call():
    CALLER.uses_old_api(THIRD)


def test_deprecation_in_a_test_module():
    warnings.warn("ours", DeprecationWarning)
'''


def test_deprecations_are_errors_in_autorec_jax_code_only(tmp_path):
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(CASES))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "setup.cfg"), "-n", "0",
         "-p", "no:cacheprovider", "-rA", "-q",
         str(tmp_path / "test_cases.py")], capture_output=True, text=True, cwd=tmp_path)
    outcomes = {line.split("::")[-1].split()[0]: line.split()[0]
                for line in done.stdout.splitlines()
                if line.startswith(("PASSED", "FAILED"))}
    assert outcomes == {"test_third_party_deprecation": "PASSED",
                        "test_third_party_deprecation_from_third_party_caller": "PASSED",
                        "test_own_deprecation": "FAILED",
                        "test_third_party_deprecation_blamed_on_our_call": "FAILED",
                        "test_deprecation_in_a_test_module": "FAILED"}, done.stdout
