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

  powercut_client.py ballast SOCKET --slots S --regions R --ballast B
      Writes B records of ballast after the regions (a round of its own, so
      never mistaken for a cycle's record), sends FLUSH, then reads every one
      back and compares it. Written before the first cut, it fills the
      brick's fast tier, so from the first cycle on every new block pushes an
      older one down, whatever the cycles' speed.

  powercut_client.py verify ... --ballast B
      Also reads the B ballast records back and compares them.

  powercut_client.py settle SOCKET --slots S --regions R
      Sends FLUSH until one succeeds (at most 3): after the brick's reboot the
      gateway reports the loss of unflushed writes once, with EIO.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from nbd_flush_writer import RECORD, NbdClient, NbdError, describe, record  # noqa: E402


# The ballast's round: cycles are numbered from 0 and never reach it.
BALLAST_ROUND = 1 << 32


def offset(args, cycle, i):
    if cycle == BALLAST_ROUND:
        return (args.regions * args.slots + i) * RECORD
    return ((cycle % args.regions) * args.slots + i) * RECORD


def check_size(args, c):
    need = (args.regions * args.slots + args.ballast) * RECORD
    if need > c.size:
        sys.exit("export of %d bytes is too small for %d regions of %d records and %d of ballast"
                 % (c.size, args.regions, args.slots, args.ballast))


def write(args):
    skip_flush = os.environ.get("PBRICK_POWERCUT_SKIP_FLUSH") == "1"
    c = NbdClient(args.socket)
    check_size(args, c)
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


def ballast(args):
    c = NbdClient(args.socket)
    check_size(args, c)
    for i in range(args.ballast):
        c.pwrite(offset(args, BALLAST_ROUND, i), record(BALLAST_ROUND, i))
    c.flush()
    for i in range(args.ballast):
        got = c.pread(offset(args, BALLAST_ROUND, i), RECORD)
        if got != record(BALLAST_ROUND, i):
            print("ballast record %d read back wrong: found %s" % (i, describe(got)))
            return 1
    c.close()
    print("ballast: %d records written, flushed and read back" % args.ballast)
    return 0


def verify(args):
    c = NbdClient(args.socket)
    check_size(args, c)
    verified = lost = 0
    specs = [(int(cycle), int(n), spec.endswith("/s"))
             for spec in args.acks for cycle, n in [spec.rstrip("/s").split(":")]]
    if args.ballast:
        specs.append((BALLAST_ROUND, args.ballast, False))
    for cycle, n, sample in specs:
        for i in sorted({0, n - 1}) if sample and n > 0 else range(n):
            got = c.pread(offset(args, cycle, i), RECORD)
            if got == record(cycle, i):
                verified += 1
            else:
                lost += 1
                if lost <= 20:
                    what = "ballast record %d" % i if cycle == BALLAST_ROUND else "record %d of cycle %d" % (i, cycle)
                    print("lost: %s (acknowledged by a FLUSH): found %s" % (what, describe(got)))
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
    ap.add_argument("mode", choices=["write", "ballast", "verify", "settle"])
    ap.add_argument("socket")
    ap.add_argument("--slots", type=int, required=True)
    ap.add_argument("--regions", type=int, required=True)
    ap.add_argument("--cycle", type=int)
    ap.add_argument("--flush-every", type=int, default=8)
    ap.add_argument("--ack-log")
    ap.add_argument("--ballast", type=int, default=0, help="records of ballast after the regions")
    ap.add_argument("--acked", dest="acks", action="append", default=[], help="CYCLE:RECORDS[/s] (verify)")
    args = ap.parse_args()
    try:
        return {"write": write, "ballast": ballast, "verify": verify, "settle": settle}[args.mode](args)
    except (NbdError, OSError) as e:
        print("powercut_client: %s" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
