#!/usr/bin/python3
"""Verify every DKIM signature of a message with dkimpy (Debian's python3-dkim),
looking keys up in a local file instead of DNS, since tests have no DNS.

usage: dkimverify.py MESSAGE RECORDS
RECORDS holds lines "selector._domainkey.domain TXT-value".
Exit 0 when all signatures verify, 1 otherwise; prints one line per signature.
"""
import sys

import dkim

msg = open(sys.argv[1], "rb").read()
records = {}
for line in open(sys.argv[2]):
    name, _, value = line.strip().partition(" ")
    if name:
        records[name.rstrip(".") + "."] = value.encode()


def dnsfunc(name, timeout=5):
    return records.get(name.decode() if isinstance(name, bytes) else name)


v = dkim.DKIM(msg)
sigs = [h for h in v.headers if h[0].lower() == b"dkim-signature"]
if not sigs:
    print("no DKIM-Signature")
    sys.exit(1)
ok = True
for i in range(len(sigs)):
    good = v.verify(idx=i, dnsfunc=dnsfunc)
    print("signature %d: %s" % (i, "pass" if good else "FAIL"))
    ok = ok and good
sys.exit(0 if ok else 1)
