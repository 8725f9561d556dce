"""``python -m reconciler``: poll every due scope until SIGTERM/SIGINT."""

from core.process import run_process
from reconciler.loop import run_reconciler

if __name__ == "__main__":
    run_process("reconciler", run_reconciler)
