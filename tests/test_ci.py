"""CI runs the README's test command, with CI set so that a missing service or data set fails instead of
being skipped."""

import re

from .conftest import REPO


def test_ci_runs_the_readme_test_command_with_ci_set():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    assert test_command.strip() in ci
    assert re.search(r"^export CI=1$", ci, flags=re.M)
