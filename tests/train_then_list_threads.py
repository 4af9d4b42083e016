"""Run under torchrun by test_train: `pixart <args>`, then the names of the threads this process still has.

Usage: train_then_list_threads.py REPORT_DIR PIXART_ARGS... Writes threads-rank-<r>.json in REPORT_DIR (two
ranks printing to one stdout can interleave within a line) and exits with the command's code. gloo's threads
are named gloo_tcp_loop and pt_gloo_runloop; one left alive at interpreter exit can abort the rank.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from helpers import thread_names

from pixart.cli.main import main

report, *args = sys.argv[1:]
code = main(args)
(Path(report) / f"threads-rank-{os.environ['RANK']}.json").write_text(json.dumps(thread_names()))
sys.exit(code)
