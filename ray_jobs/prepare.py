"""Ray job entrypoint for the prepare stage; arguments as for `kdist prepare`.

    ray job submit --working-dir . -- python ray_jobs/prepare.py --config configs/demo.yaml
"""

import sys
from pathlib import Path

# With --working-dir, the shipped checkout (the parent of ray_jobs/) is the kdist to run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
