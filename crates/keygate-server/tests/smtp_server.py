"""A real SMTP server for keygate's email tests (aiosmtpd, Debian's python3-aiosmtpd).

Stores each message it accepts in a maildir. Options:

  --tls starttls   offer STARTTLS and refuse mail before it (require_starttls)
  --tls smtps      TLS from the first byte (implicit TLS)
  --cert/--key     the certificate chain and key for TLS (PEM)
  --hold FILE      while FILE exists, a message is stored and then its final reply (250) is
                   held back until FILE is removed: the client is kept waiting between the
                   server having the message and saying so (for the kill -9 test)

Runs until killed; prints "ready" on stdout once it listens.
"""

import argparse
import asyncio
import os
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox


class HoldingMailbox(Mailbox):
    def __init__(self, maildir, hold):
        super().__init__(maildir)
        self.hold = hold

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        while self.hold and os.path.exists(self.hold):
            await asyncio.sleep(0.02)
        return reply


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls", choices=["starttls", "smtps"])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--hold")
    args = parser.parse_args()

    handler = HoldingMailbox(args.maildir, args.hold)
    options = {}
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.tls == "starttls":
            options = {"tls_context": context, "require_starttls": True}
        else:
            options = {"ssl_context": context}
    controller = Controller(handler, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
