#!/usr/bin/env python3
"""Django's command-line utility for the test provider (e.g. `check`, `showmigrations`).
The server itself is started with serve.py, which migrates a fresh database per process;
this uses a throw-away database directory too."""

import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "provider.settings")
    db_dir = None
    if not os.environ.get("PROVIDER_DB_DIR"):
        db_dir = os.environ["PROVIDER_DB_DIR"] = tempfile.mkdtemp(prefix="provet-provider-")
    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    finally:
        if db_dir:
            shutil.rmtree(db_dir, ignore_errors=True)
