"""DKIM signing (RFC 6376, RFC 8463) of our own mail, once, as it enters the queue.

settings.py reads the [dkim."domain"] tables (no key files: the configuration
is loaded by commands that may not read them); keys.py reads and judges the
keys when `serve` starts or reloads; sign.py decides and signs; keygen.py
makes a key and the DNS record to publish. The daemon's queue entry calls
`Signer.sign` before the store prepends our Received: header, so the trace
field, which is not signed anyway, stays outside what was signed.

Nothing is imported here: the configuration reads dkim.settings, and
sendmail, which loads the configuration, must not pay for dkimpy and PyNaCl.
The signer is relaymail.dkim.sign.load_signer; `relaymail check` wants
relaymail.dkim.keys.check_dkim_keys.
"""
