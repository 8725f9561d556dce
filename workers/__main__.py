"""``python -m workers``: one worker process consuming the sync queue until SIGTERM/SIGINT."""

from core.process import run_process
from workers.runtime import run_worker

if __name__ == "__main__":
    run_process("worker", run_worker)
