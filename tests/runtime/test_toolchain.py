"""The lock is the environment: every extra's requirement is locked at a version it allows, and the suite
runs with exactly the locked versions (no more, no fewer packages)."""
from __future__ import annotations

from packaging.requirements import Requirement

from toolchain import GPU_PREFIXES, NOT_LOCKED, canonical, declared, installed, locked


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    pins = locked()
    problems = []
    for text in declared():
        requirement = Requirement(text)
        name = canonical(requirement.name)
        if name not in pins:
            problems.append(f"{text}: not in requirements/dev.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{text}: the lock has {pins[name]}")
    assert not problems, "pyproject and the lock disagree; run `make lock`: " + "; ".join(problems)


def test_the_environment_is_the_lock():
    pins, have = locked(), installed()
    differ = [f"{name} {have.get(name, 'missing')} (locked {version})"
              for name, version in sorted(pins.items()) if have.get(name) != version]
    unlocked = sorted(name for name in set(have) - set(pins) - NOT_LOCKED if not name.startswith(GPU_PREFIXES))
    assert not differ, "installed versions differ from requirements/dev.lock (rebuild: rm -r .venv; make test): " \
        + ", ".join(differ)
    assert not unlocked, f"installed but not locked: {unlocked}; add them through pyproject and `make lock`"
