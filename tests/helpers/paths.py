"""Where the repository and its test fixtures are, for tests in any folder."""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO_ROOT, "configs")
HF_FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "hf")
