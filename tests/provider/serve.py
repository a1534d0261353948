#!/usr/bin/env python3
"""Start the test OAuth 2.0 / OpenID Connect provider (django-oauth-toolkit) for
provet-broker's tests.

    tests/.venv/bin/python tests/provider/serve.py --port N

Binds 127.0.0.1:N (N=0 picks a free port), migrates a fresh SQLite database in a
temporary directory, creates the test user clinic-user / clinic-password, then prints
exactly one line on stdout:

    READY http://127.0.0.1:<port>

and serves with waitress (one process, many threads). It exits when its stdin reaches
end of file (the process that started it closed the pipe or died), on SIGTERM or SIGINT,
and removes its temporary directory. See README.md.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading

sys.dont_write_bytecode = True  # keep the source tree free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TEST_USERNAME = "clinic-user"
TEST_PASSWORD = "clinic-password"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--threads", type=int, default=64, help="request threads (default 64)")
    parser.add_argument(
        "--access-token-seconds",
        type=int,
        default=None,
        help="access token lifetime (default: $PROVIDER_ACCESS_TOKEN_SECONDS or 36000)",
    )
    parser.add_argument(
        "--no-stdin-watchdog",
        action="store_true",
        help="do not exit when stdin closes (for running by hand with stdin at /dev/null)",
    )
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if args.threads < 1:
        parser.error("--threads must be positive")
    if args.access_token_seconds is not None and args.access_token_seconds < 1:
        parser.error("--access-token-seconds must be positive")
    return args


def main():
    args = parse_args()
    db_dir = tempfile.mkdtemp(prefix="provet-provider-")

    def shutdown(code=0):
        shutil.rmtree(db_dir, ignore_errors=True)
        sys.stdout.flush()
        os._exit(code)

    signal.signal(signal.SIGTERM, lambda *_: shutdown(0))
    signal.signal(signal.SIGINT, lambda *_: shutdown(0))

    try:
        os.environ["PROVIDER_DB_DIR"] = db_dir
        os.environ["DJANGO_SETTINGS_MODULE"] = "provider.settings"
        if args.access_token_seconds is not None:
            os.environ["PROVIDER_ACCESS_TOKEN_SECONDS"] = str(args.access_token_seconds)

        import waitress

        from provider import state
        from provider.wsgi import application  # sets Django up

        server = waitress.create_server(
            application,
            host="127.0.0.1",
            port=args.port,
            threads=args.threads,
            connection_limit=1000,
            backlog=1024,
            channel_timeout=60,
            asyncore_use_poll=True,
            ident="provet-test-provider",
        )
        state.base_url = f"http://127.0.0.1:{server.effective_port}"

        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        settings.CSRF_TRUSTED_ORIGINS = [state.base_url]
        call_command("migrate", verbosity=0, interactive=False)
        get_user_model().objects.create_user(username=TEST_USERNAME, password=TEST_PASSWORD)
        from django.db import connections

        connections.close_all()
    except Exception as exc:  # noqa: BLE001 - report any startup failure plainly
        if not isinstance(exc, OSError):
            import traceback

            traceback.print_exc()
        print(f"serve.py: startup failed: {exc}", file=sys.stderr, flush=True)
        shutdown(1)

    if not args.no_stdin_watchdog:

        def watchdog():
            try:
                while sys.stdin.buffer.read1(65536):
                    pass
            except (OSError, ValueError):
                pass
            shutdown(0)

        threading.Thread(target=watchdog, name="stdin-watchdog", daemon=True).start()

    print(f"READY {state.base_url}", flush=True)
    try:
        server.run()
    finally:
        shutdown(0)


if __name__ == "__main__":
    main()
