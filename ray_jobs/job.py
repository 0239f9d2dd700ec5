"""The one Ray job entrypoint: `kdist <command>` for a stage, the whole run, or the demo.

    ray job submit --working-dir . -- python ray_jobs/job.py run --config my-run.yaml
    ray job submit --working-dir . -- python ray_jobs/job.py generate --config my-run.yaml

The commands it takes are the stage registry's (kdist.stages.JOB_COMMANDS).
"""

import sys
from pathlib import Path

# With --working-dir, the shipped checkout (the parent of ray_jobs/) is the kdist to run.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdist.cli import main  # noqa: E402
from kdist.stages import JOB_COMMANDS  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in JOB_COMMANDS:
        print(f"usage: ray_jobs/job.py {{{','.join(JOB_COMMANDS)}}} --config CONFIG [KEY=VALUE ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
