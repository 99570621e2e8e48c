"""Headless Chromium for the tests that render the HTML reports (Debian's chromium package; `make test` installs it
where it can, and those tests are skipped where it could not)."""

import shutil
import subprocess

import pytest


def chromium() -> str | None:
  return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(chromium() is None,
                                    reason="needs Chromium (make test installs Debian's chromium package)")


def headless(profile, *args) -> subprocess.CompletedProcess:
  """Run headless Chromium with a throwaway profile folder, no network, and `args`."""
  flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}"]
  return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)
