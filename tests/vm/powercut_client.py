#!/usr/bin/env python3
"""NBD client of the power-cut test (tests/vm/powercut): writes a stream of
records and logs what each completed FLUSH covered, or verifies records.

The volume is cut into regions of SLOTS records of 64 KiB; cycle C writes
region C % REGIONS, record i at slot i, with contents naming (C, i) (see
nbd_flush_writer.record), so a record of another cycle or slot is never
mistaken for the right one.

  powercut_client.py write SOCKET --cycle C --slots S --regions R --flush-every K --ack-log FILE
      Writes records 0, 1, ... of cycle C one request at a time; after every
      K writes sends FLUSH, and when it succeeds appends the number of records
      that FLUSH covers to FILE (written and fsynced at once). Stops after S
      records or when the connection fails (the brick lost power).
      PBRICK_POWERCUT_SKIP_FLUSH=1 logs the count without sending FLUSH: a
      deliberately broken writer, to show that the test catches lost data.

  powercut_client.py verify SOCKET --slots S --regions R --acked C:N[/s] ...
      Reads records 0..N-1 of each cycle C (with /s only the first and the
      last of them) and compares them; prints
      "verified V records" and exits 0, or names each lost record, prints
      "LOST L of V records" and exits 1; 2 when it could not verify.

  powercut_client.py settle SOCKET --slots S --regions R
      Sends FLUSH until one succeeds (at most 3): after the brick's reboot the
      gateway reports the loss of unflushed writes once, with EIO.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from nbd_flush_writer import RECORD, NbdClient, NbdError, describe, record  # noqa: E402


def offset(args, cycle, i):
    return ((cycle % args.regions) * args.slots + i) * RECORD


def write(args):
    skip_flush = os.environ.get("PBRICK_POWERCUT_SKIP_FLUSH") == "1"
    c = NbdClient(args.socket)
    if args.regions * args.slots * RECORD > c.size:
        sys.exit("export of %d bytes is too small for %d regions of %d records" % (c.size, args.regions, args.slots))
    log = open(args.ack_log, "a")

    def ack(n):
        if not skip_flush:
            c.flush()
        log.write("%d\n" % n)
        log.flush()
        os.fsync(log.fileno())

    try:
        for i in range(args.slots):
            c.pwrite(offset(args, args.cycle, i), record(args.cycle, i))
            if (i + 1) % args.flush_every == 0:
                ack(i + 1)
        if args.slots % args.flush_every:
            ack(args.slots)
    except (NbdError, OSError) as e:
        print("writer: stopped: %s" % e)
        return 0
    c.close()
    print("writer: wrote all %d records" % args.slots)
    return 0


def verify(args):
    c = NbdClient(args.socket)
    verified = lost = 0
    for spec in args.acks:
        sample = spec.endswith("/s")
        cycle, n = (int(x) for x in spec.rstrip("/s").split(":"))
        for i in sorted({0, n - 1}) if sample and n > 0 else range(n):
            got = c.pread(offset(args, cycle, i), RECORD)
            if got == record(cycle, i):
                verified += 1
            else:
                lost += 1
                if lost <= 20:
                    print("lost: record %d of cycle %d (acknowledged by a FLUSH): found %s" % (i, cycle, describe(got)))
    c.close()
    if lost:
        print("LOST %d of %d records" % (lost, verified + lost))
        return 1
    print("verified %d records" % verified)
    return 0


def settle(args):
    """The gateway reports unflushed writes lost in the brick's reboot with
    EIO on the next FLUSH (docs/persistence.md): take that report here, so the
    next stream starts on a clean slate. A FLUSH must succeed within 3 tries."""
    c = NbdClient(args.socket)
    failures = []
    for _ in range(3):
        try:
            c.flush()
            break
        except NbdError as e:
            failures.append(str(e))
    else:
        print("FLUSH keeps failing after the reboot: %s" % "; ".join(failures))
        return 2
    c.close()
    print("flush ok%s" % ("" if not failures else " after %d failed (%s)" % (len(failures), failures[0])))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["write", "verify", "settle"])
    ap.add_argument("socket")
    ap.add_argument("--slots", type=int, required=True)
    ap.add_argument("--regions", type=int, required=True)
    ap.add_argument("--cycle", type=int)
    ap.add_argument("--flush-every", type=int, default=8)
    ap.add_argument("--ack-log")
    ap.add_argument("--acked", dest="acks", action="append", default=[], help="CYCLE:RECORDS[/s] (verify)")
    args = ap.parse_args()
    try:
        return {"write": write, "verify": verify, "settle": settle}[args.mode](args)
    except (NbdError, OSError) as e:
        print("powercut_client: %s" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
